#include "ldm/train/trainer.h"

#include <ATen/autocast_mode.h>
#include <sys/resource.h>
#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <iostream>
#include <optional>

#include "ldm/data/dataset.h"
#include "ldm/data/loader.h"
#include "ldm/data/registry.h"
#include "ldm/error.h"
#include "ldm/io/atomic_file.h"
#include "ldm/io/image.h"
#include "ldm/io/run_dir.h"
#include "ldm/lr_scheduler.h"
#include "ldm/models/autoencoder.h"
#include "ldm/models/diffusion/ddpm.h"
#include "ldm/models/diffusion/load.h"
#include "ldm/models/diffusion/samplers/sampler.h"
#include "ldm/pipeline/pipeline.h"
#include "ldm/modules/encoders/clip_text.h"
#include "ldm/modules/encoders/modules.h"
#include "ldm/modules/layers.h"
#include "ldm/modules/losses/contperceptual.h"
#include "ldm/train/checkpoint.h"
#include "ldm/train/distributed.h"
#include "ldm/train/metrics.h"
#include "ldm/train/optim.h"
#include "ldm/train/task.h"
#include "ldm/util/config.h"
#include "ldm/models/registry.h"
#include "ldm/util/autocast.h"
#include "ldm/util/memory.h"
#include "ldm/util/progress.h"

namespace fs = std::filesystem;

namespace ldm {

void apply_overrides(YAML::Node& cfg, const std::vector<std::string>& kv) {
  for (const auto& s : kv) {
    auto eq = s.find('=');
    if (eq == std::string::npos || eq == 0) throw Error("override \"" + s + "\": expected key.path=value");
    std::string key = s.substr(0, eq);
    YAML::Node value = parse_yaml(s.substr(eq + 1), "override " + key);
    std::vector<std::string> parts;
    size_t at = 0;
    for (size_t dot; (dot = key.find('.', at)) != std::string::npos; at = dot + 1) parts.push_back(key.substr(at, dot - at));
    parts.push_back(key.substr(at));
    std::function<void(YAML::Node, size_t)> set = [&](YAML::Node n, size_t i) {
      if (i + 1 == parts.size()) {
        n[parts[i]] = value;
        return;
      }
      if (!n[parts[i]] || !n[parts[i]].IsMap()) n[parts[i]] = YAML::Node(YAML::NodeType::Map);
      set(n[parts[i]], i + 1);
    };
    set(cfg, 0);
  }
}

namespace {

void set_lr(torch::optim::Optimizer& opt, double lr) {
  for (auto& g : opt.param_groups()) g.options().set_lr(lr);
}

// One training run: what train() sets up, then steps until max_steps.
class Run {
 public:
  Run(const YAML::Node& config, const TrainOptions& o) : o_(o), cfg_(YAML::Clone(config)), s_(read_settings(cfg_)) {
    if (o.max_steps >= 0) s_.max_steps = o.max_steps;
    s_.quiet = o.quiet;
    torch::manual_seed(s_.seed);  // initial weights
    dev_ = s_.device == "auto" ? (torch::cuda::is_available() ? torch::kCUDA : torch::kCPU) : torch::Device(s_.device);
    rank0_ = o.rank == 0;
    if (s_.precision == "16" && dev_.is_cpu())
      throw Error("lightning.trainer.precision: 16 (fp16 autocast) needs a GPU; on the CPU use bf16 (or 32)");
  }

  void setup() {
    auto data = read_data();
    make_task();
    make_loader(data);
    task_->check_settings(s_);
    claim_run_dir();
    config_yaml_ = YAML::Dump(cfg_) + "\n";
    if (rank0_) write_file_atomic((fs::path(o_.out_dir) / "config.yaml").string(), config_yaml_.data(), config_yaml_.size());
    if (!o_.resume.empty()) resume();
    if (!o_.quiet && rank0_)
      std::cerr << "training " << target_ << " on " << data.ds->describe() << ", device " << dev_ << ", lr " << lr_
                << (s_.scale_lr ? " (base_lr x batch x accumulate x processes)" : "") << ", " << s_.max_steps << " steps\n";
    task_->prepare(*data.ds, data.tf, s_);
    if (dist_) broadcast_weights();
    if (rank0_) metrics_ = std::make_unique<MetricsLogger>(o_.out_dir, resumed_ ? st_.step : -1);
  }

  TrainResult loop() {
    Progress prog("train", s_.max_steps, st_.step);
    window_t0_ = std::chrono::steady_clock::now();
    while (st_.step < s_.max_steps) {
      std::vector<Batch> bs;
      for (int a = 0; a < s_.accumulate; ++a) bs.push_back(loader_->next());
      if (st_.step == 0 && st_.batches == 0) task_->on_first_batch(bs[0], gen_, resumed_);
      st_.epoch = bs.back().epoch;
      const double lr_now = lr_ * sched_(st_.step);
      for (auto& no : opts_) set_lr(*no.opt, lr_now);
      std::map<std::string, double> logs;
      for (int idx = 0; idx < static_cast<int>(opts_.size()); ++idx)
        if (task_->active(idx, st_.step)) optimizer_step(idx, bs, logs);
      task_->after_step();
      ++window_n_;
      st_.batches += s_.accumulate;
      ++st_.step;
      res_.losses.push_back(logs.count("train/loss") ? logs["train/loss"] : logs["train/total_loss"]);
      after_step(bs.back(), logs, lr_now, prog);
    }
    if (!o_.quiet && rank0_) prog.finish();
    res_.steps = st_.step;
    res_.peak_rss_gb = peak_rss_gb();
    return res_;
  }

 private:
  DataSpec read_data() {
    auto dp = cfg_["data"] && cfg_["data"]["params"] ? cfg_["data"]["params"] : YAML::Node();
    if (!dp || !dp["train"]) throw Error("config: data.params.train is required ({target, params} of a dataset)");
    Params D(dp, "data.params");
    s_.batch_size = D.get<int64_t>("batch_size", 32);
    s_.num_workers = D.get<int>("num_workers", 2);
    D.ignore({"wrap", "validation", "test", "num_val_workers", "shuffle_val_dataloader"});
    auto data = make_dataset(D.node("train"), "data.params.train");
    D.check_unused("main.DataModuleFromConfig");
    return data;
  }

  void make_task() {
    auto model = cfg_["model"];
    if (!model) throw Error("config: model is required");
    const double base_lr = Params(model, "model").get<double>("base_learning_rate", 1e-4);
    lr_ = s_.scale_lr ? base_lr * s_.batch_size * s_.accumulate * o_.world : base_lr;
    target_ = target_config(model, "model", {"base_learning_rate"}).target;
    task_ = ldm::make_task(cfg_, lr_, s_);
    task_->dev = dev_;
    task_->quiet = o_.quiet || o_.rank != 0;
    task_->rank = o_.rank;
    task_->world = o_.world;
    if (o_.world > 1) {
      DistEnv de;
      de.rank = o_.rank;
      de.world = o_.world;
      de.master_addr = o_.master_addr;
      de.master_port = o_.master_port;
      auto ms = [](double s) { return std::chrono::milliseconds(static_cast<int64_t>(s * 1000)); };
      dist_ = std::make_unique<Distributed>(de, ms(o_.dist_timeout_s), ms(o_.rendezvous_timeout_s));
      task_->dist = dist_.get();
    }
    task_->module().to(dev_);
    task_->module().train();
    opts_ = task_->optimizers();
    sched_ = [](int64_t) { return 1.0; };
    if (auto sc = model["params"]["scheduler_config"]) {
      auto tc = target_config(sc, "model.params.scheduler_config");
      std::shared_ptr<LrSchedule> sched = make_lr_schedule(tc.target, tc.params);
      sched_ = [sched](int64_t n) { return (*sched)(n); };
    }
  }

  void make_loader(const DataSpec& data) {
    LoaderOptions lo;
    lo.batch_size = s_.batch_size;
    lo.seed = s_.seed;
    lo.num_workers = s_.num_workers;
    lo.rank = o_.rank;
    lo.world = o_.world;
    loader_ = std::make_unique<DataLoader>(data.ds, data.tf, lo);
    if (s_.max_steps < 0) s_.max_steps = s_.max_epochs * loader_->batches_per_epoch() / s_.accumulate;
  }

  // A new run never lands on an old one: its checkpoints and metrics would
  // interleave and pruning would keep the wrong ones.
  void claim_run_dir() {
    if (o_.resume.empty() && is_run_dir(o_.out_dir)) {
      if (!o_.force)
        throw Error("-o " + o_.out_dir + ": already holds a run (checkpoints/, metrics.csv); continue it with --resume " +
                    o_.out_dir + ", start it over with --force, or choose another -o");
      if (rank0_)
        for (const char* old : {"checkpoints", "metrics.csv", "tensorboard", "images"}) fs::remove_all(fs::path(o_.out_dir) / old);
    }
    if (dist_) dist_->barrier();  // rank 0 has cleared before anyone writes
    fs::create_directories(o_.out_dir);
  }

  void resume() {
    auto ck = latest_checkpoint(o_.resume);
    st_ = load_checkpoint(ck, task_->module(), opts_);
    if (st_.rng.defined()) gen_.set_state(st_.rng);
    // the loader's position and the sharding depend on the number of processes
    if (st_.extra.count("world_size") && static_cast<int>(st_.extra["world_size"]) != o_.world)
      throw Error("--resume " + o_.resume + ": the run was trained with " +
                  std::to_string(static_cast<int>(st_.extra["world_size"])) + " processes, this one has " +
                  std::to_string(o_.world) + "; resume with the same number (--nproc / WORLD_SIZE)");
    loader_->seek(st_.batches);
    resumed_ = true;
    res_.last_checkpoint = ck;
    if (!o_.quiet && rank0_) std::cerr << "resumed from " << ck << " at step " << st_.step << "\n";
  }

  void broadcast_weights() {  // rank 0's weights everywhere (DDP's initial broadcast)
    std::vector<torch::Tensor> state;
    for (auto& p : task_->module().parameters()) state.push_back(p.data());
    for (auto& b : task_->module().buffers()) state.push_back(b);
    dist_->broadcast(state);
  }

  // A micro-batch's loss and logs, summed over ranks while its backward runs.
  struct PendingLoss {
    torch::Tensor values;  // [loss, logs...] in float64
    std::function<void()> wait;
  };
  PendingLoss start_reduce(LossOut& L) {
    std::vector<double> vals{L.loss.item<double>()};
    for (auto& [k, val] : L.log) vals.push_back(val);
    PendingLoss p{torch::tensor(vals, torch::kFloat64), {}};
    if (dist_) p.wait = dist_->allreduce_sum_async(p.values);
    return p;
  }
  // The global batch's mean loss, and its logs into L (one NaN stops all ranks alike).
  double finish_reduce(PendingLoss& p, LossOut& L) {
    if (p.wait) {
      p.wait();
      p.values.div_(o_.world);
    }
    auto v = p.values.accessor<double, 1>();
    int i = 1;
    for (auto& [k, val] : L.log) val = v[i++];
    return v[0];
  }

  void optimizer_step(int idx, const std::vector<Batch>& bs, std::map<std::string, double>& logs) {
    // set to none: backward then hands its gradient over instead of adding it
    // to zeros (two passes over the weights' size saved; PyTorch 2's default)
    task_->module().zero_grad(/*set_to_none=*/true);
    if (dist_ && !syncs_.count(idx)) syncs_[idx] = std::make_unique<GradSync>(*dist_, task_->params(idx));
    std::vector<LossOut> outs(bs.size());
    std::vector<PendingLoss> pending;
    for (size_t mb = 0; mb < bs.size(); ++mb) {
      if (dist_ && mb + 1 == bs.size()) syncs_[idx]->arm();  // the last backward reduces while it runs
      {
        Autocast ac(s_.precision, dev_);
        outs[mb] = task_->loss(bs[mb], idx, st_.step, gen_);
      }
      // the losses are summed while backward runs: no wait for the other ranks here
      pending.push_back(start_reduce(outs[mb]));
      (outs[mb].loss / s_.accumulate).backward();
    }
    if (dist_) syncs_[idx]->finish();
    for (size_t mb = 0; mb < bs.size(); ++mb) {
      const double v = finish_reduce(pending[mb], outs[mb]);
      if (!std::isfinite(v))  // before the optimizer moves: the weights stay those of the last good step
        throw Error("step " + std::to_string(st_.step + 1) + ": loss is " + std::to_string(v) + " (optimizer " +
                    std::to_string(idx) + "); stopped. Last good checkpoint: " +
                    (res_.last_checkpoint.empty() ? std::string("none yet") : res_.last_checkpoint));
      for (auto& [k, val] : outs[mb].log) logs["train/" + k] += val / s_.accumulate;
    }
    if (s_.grad_clip > 0) torch::nn::utils::clip_grad_norm_(task_->params(idx), s_.grad_clip);
    opts_[idx].opt->step();
  }

  void after_step(const Batch& last, std::map<std::string, double>& logs, double lr_now, Progress& prog) {
    if (rank0_ && (st_.step % s_.log_every == 0 || st_.step == s_.max_steps)) {
      const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - window_t0_).count();
      logs["lr"] = lr_now;
      logs["epoch"] = static_cast<double>(st_.epoch);
      logs["it_per_s"] = window_n_ / el;
      logs["samples_per_s"] = window_n_ * s_.batch_size * s_.accumulate * o_.world / el;
      metrics_->log(st_.step, logs);
      window_t0_ = std::chrono::steady_clock::now();
      window_n_ = 0;
    }
    if (!o_.quiet && rank0_) {
      char extra[96];
      std::snprintf(extra, sizeof extra, "loss %.4f  lr %.2e", res_.losses.back(), lr_now);
      prog.update(st_.step, extra);
    }
    if (rank0_ && s_.image_every > 0 && st_.step % s_.image_every == 0) {
      fs::create_directories(fs::path(o_.out_dir) / "images");
      char name[64];
      std::snprintf(name, sizeof name, "step-%09lld.png", (long long)st_.step);
      task_->log_images((fs::path(o_.out_dir) / "images" / name).string(), last, s_);
      nn::release_fast_conv(task_->module());  // packed inference weights: stale after the next step
    }
    if (rank0_ && (st_.step % s_.checkpoint_every == 0 || st_.step == s_.max_steps)) {
      st_.rng = gen_.get_state();
      st_.extra["world_size"] = o_.world;
      res_.last_checkpoint = save_checkpoint(o_.out_dir, task_->module(), opts_, st_, config_yaml_, s_.keep);
      task_->on_checkpoint(o_.out_dir, st_.step);
    }
  }

  const TrainOptions& o_;
  YAML::Node cfg_;
  Settings s_;
  torch::Device dev_ = torch::kCPU;
  bool rank0_ = true, resumed_ = false;
  double lr_ = 0;
  std::string target_, config_yaml_;
  std::unique_ptr<Task> task_;
  std::unique_ptr<Distributed> dist_;
  std::vector<NamedOptimizer> opts_;
  std::function<double(int64_t)> sched_;
  std::unique_ptr<DataLoader> loader_;
  // one generator state on every rank (Task::randn_rows slices the rows)
  torch::Generator gen_ = torch::make_generator<at::CPUGeneratorImpl>(s_.seed + 1000003ull);
  TrainState st_;
  TrainResult res_;
  std::unique_ptr<MetricsLogger> metrics_;
  std::map<int, std::unique_ptr<GradSync>> syncs_;  // per optimizer
  std::chrono::steady_clock::time_point window_t0_;
  int64_t window_n_ = 0;
};

}  // namespace

TrainResult train(const YAML::Node& config, const TrainOptions& o) {
  const auto t_start = std::chrono::steady_clock::now();
  Run run(config, o);
  run.setup();
  auto res = run.loop();
  res.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  return res;
}

}  // namespace ldm

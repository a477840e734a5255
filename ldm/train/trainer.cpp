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
#include "ldm/error.h"
#include "ldm/io/image.h"
#include "ldm/lr_scheduler.h"
#include "ldm/models/autoencoder.h"
#include "ldm/models/diffusion/ddpm.h"
#include "ldm/models/diffusion/load.h"
#include "ldm/models/diffusion/samplers/sampler.h"
#include "ldm/modules/encoders/clip_text.h"
#include "ldm/modules/encoders/modules.h"
#include "ldm/modules/layers.h"
#include "ldm/modules/losses/contperceptual.h"
#include "ldm/train/checkpoint.h"
#include "ldm/train/distributed.h"
#include "ldm/train/metrics.h"
#include "ldm/train/optim.h"
#include "ldm/util/config.h"
#include "ldm/util/instantiate.h"
#include "ldm/util/autocast.h"
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

struct Settings {
  uint64_t seed = 23;
  std::string device = "auto";
  int64_t max_steps = -1, max_epochs = -1, log_every = 50, checkpoint_every = 1000, image_every = 0;
  int accumulate = 1, keep = 2, num_workers = 2;
  double grad_clip = 0.0, sample_cfg = 3.0;
  std::string precision = "32", sampler = "ddim";
  bool scale_lr = true;
  std::string cache_latents = "auto";  // auto | true | false
  std::string vocab;                   // CLIP vocabulary for caption-conditioned models
  int64_t sample_steps = 50, batch_size = 32;
  bool quiet = false;
};

Settings read_settings(const YAML::Node& cfg) {
  Settings s;
  auto lt = cfg["lightning"] && cfg["lightning"]["trainer"] ? cfg["lightning"]["trainer"] : YAML::Node();
  Params L(lt, "lightning.trainer");
  s.max_steps = L.get<int64_t>("max_steps", -1);
  s.max_epochs = L.get<int64_t>("max_epochs", -1);
  s.accumulate = L.get<int>("accumulate_grad_batches", 1);
  s.grad_clip = L.get<double>("gradient_clip_val", 0.0);
  s.log_every = L.get<int64_t>("log_every_n_steps", 50);
  if (L.has("precision")) s.precision = L.node("precision").as<std::string>();
  if (s.precision != "32" && s.precision != "bf16" && s.precision != "16")
    throw Error("lightning.trainer.precision: expected 32, 16 or bf16, got \"" + s.precision + "\"");
  Params T(cfg["training"], "training");
  s.seed = static_cast<uint64_t>(T.get<int64_t>("seed", 23));
  s.device = T.get<std::string>("device", "auto");
  s.log_every = T.get<int64_t>("log_every", s.log_every);
  s.checkpoint_every = T.get<int64_t>("checkpoint_every", 1000);
  s.image_every = T.get<int64_t>("image_every", 0);
  s.keep = T.get<int>("keep_checkpoints", 2);
  s.scale_lr = T.get<bool>("scale_lr", true);
  s.cache_latents = T.get<std::string>("cache_latents", "auto");
  s.sample_steps = T.get<int64_t>("sample_steps", 50);
  s.sample_cfg = T.get<double>("sample_cfg_scale", 3.0);
  s.sampler = T.get<std::string>("sampler", "ddim");
  s.vocab = T.get<std::string>("vocab", "");
  T.check_unused("training");
  if (s.accumulate < 1) throw Error("lightning.trainer.accumulate_grad_batches: expected >= 1");
  if (s.max_steps < 0 && s.max_epochs < 0) throw Error("lightning.trainer: give max_steps or max_epochs");
  return s;
}

struct DataSpec {
  std::shared_ptr<Dataset> ds;
  TransformOptions tf;
};

DataSpec make_dataset(const YAML::Node& node, const std::string& where) {
  auto tc = target_config(node, where);
  DataSpec d;
  const auto& p = tc.params;
  if (tc.target == "ldm.data.fashion_mnist.FashionMNIST") {
    d.ds = std::make_shared<FashionMNIST>(p.get<std::string>("split", "train"),
                                          p.get<std::string>("root", FashionMNIST::kDefaultRoot));
  } else if (tc.target == "ldm.data.image_folder.ImageFolder") {
    d.ds = std::make_shared<ImageFolder>(p.req<std::string>("root"), p.get<int>("channels", 3), p.get<bool>("skip_bad", false));
  } else {
    throw Error(where + ".target: unknown dataset \"" + tc.target +
                "\" (known: ldm.data.fashion_mnist.FashionMNIST, ldm.data.image_folder.ImageFolder)");
  }
  d.tf = TransformOptions::from_params(p);
  p.check_unused(tc.target);
  return d;
}

// What differs between models: parameters, optimizers, loss, images.
class Task {
 public:
  virtual ~Task() = default;
  virtual torch::nn::Module& module() = 0;
  virtual std::vector<NamedOptimizer> optimizers() = 0;
  virtual std::vector<torch::Tensor> params(int idx) = 0;
  virtual bool active(int, int64_t) { return true; }
  virtual LossOut loss(const Batch& b, int idx, int64_t step, torch::Generator& g) = 0;
  virtual void on_first_batch(const Batch&, torch::Generator&, bool) {}
  virtual void after_step() {}
  virtual void prepare(const Dataset&, const TransformOptions&, const Settings&) {}
  virtual void log_images(const std::string&, const Batch&, const Settings&) {}
  torch::Device dev = torch::kCPU;
  bool quiet = false;
  // Data parallel: each step's randomness is drawn for the global batch with
  // the generator every rank shares and sliced to this rank's rows (rank,
  // rank + world, ... as the loader shards), so N ranks of B rows compute
  // exactly what one process with N*B rows does.
  int rank = 0, world = 1;
  Distributed* dist = nullptr;
  torch::Tensor my_rows(const torch::Tensor& global) const {
    return world == 1 ? global : global.slice(0, rank, global.size(0), world).contiguous();
  }
  torch::Tensor randn_rows(std::vector<int64_t> shape, torch::Generator& g) const {
    shape[0] *= world;
    return my_rows(torch::randn(shape, g));
  }
  torch::Tensor rand_rows(int64_t n, torch::Generator& g) const { return my_rows(torch::rand({n * world}, g)); }
};

class AutoencoderTask : public Task {
 public:
  AutoencoderTask(const YAML::Node& model, double lr) {
    auto tc = target_config(model, "model", {"base_learning_rate"});
    ae_ = AutoencoderKL::from_params(tc.params);
    auto lc = target_config(tc.params.raw()["lossconfig"], "model.params.lossconfig");
    if (lc.target != "ldm.modules.losses.LPIPSWithDiscriminator")
      throw Error("model.params.lossconfig.target: training needs ldm.modules.losses.LPIPSWithDiscriminator, got " + lc.target);
    loss_ = LPIPSWithDiscriminator::from_params(lc.params);
    ae_->register_module("loss", loss_);  // checkpoint keys loss.* as the reference
    std::vector<torch::Tensor> ae_params = params(0);
    opt_ae_ = std::make_unique<torch::optim::Adam>(ae_params, torch::optim::AdamOptions(lr).betas({0.5, 0.9}));
    opt_disc_ = std::make_unique<torch::optim::Adam>(loss_->discriminator->parameters(),
                                                     torch::optim::AdamOptions(lr).betas({0.5, 0.9}));
  }
  torch::nn::Module& module() override { return *ae_; }
  std::vector<NamedOptimizer> optimizers() override { return {{"opt0", opt_ae_.get()}, {"opt1", opt_disc_.get()}}; }
  std::vector<torch::Tensor> params(int idx) override {
    if (idx == 1) return loss_->discriminator->parameters();
    // the reference's opt_ae: encoder, decoder, quant_conv, post_quant_conv (not loss.logvar)
    std::vector<torch::Tensor> v;
    for (auto* m : std::initializer_list<torch::nn::Module*>{ae_->encoder.get(), ae_->decoder.get(), ae_->quant_conv.get(),
                                                              ae_->post_quant_conv.get()})
      for (auto& p : m->parameters()) v.push_back(p);
    return v;
  }
  // Before disc_start the discriminator's loss is 0: its optimizer would not move.
  bool active(int idx, int64_t step) override { return idx == 0 || loss_->disc_active(step); }
  LossOut loss(const Batch& b, int idx, int64_t step, torch::Generator& g) override {
    auto x = b.image.to(dev);
    if (idx == 1) {
      std::optional<DiagonalGaussianDistribution> post;
      torch::Tensor rec;
      {
        torch::NoGradGuard ng;  // the discriminator's step sees detached reconstructions
        post.emplace(ae_->encode(x));
        rec = ae_->decode(post->sample(g));
      }
      return loss_->forward(x, rec, *post, 1, step, ae_->decoder->last_layer());
    }
    auto post = ae_->encode(x);
    auto rec = ae_->decode(post.sample(g));
    return loss_->forward(x, rec, post, 0, step, ae_->decoder->last_layer());
  }
  void log_images(const std::string& path, const Batch& b, const Settings&) override {
    torch::NoGradGuard ng;
    ae_->eval();
    auto x = b.image.slice(0, 0, std::min<int64_t>(8, b.image.size(0))).to(dev);
    auto rec = ae_->decode(ae_->encode(x).mode());
    ae_->train();
    auto grid = io::make_grid(io::to_unit_range(torch::cat({x, rec}, 0)).cpu(), x.size(0));
    io::save_png(path, grid, {{"Description", "top: inputs, bottom: reconstructions (posterior mode)"}});
  }

 private:
  std::shared_ptr<AutoencoderKL> ae_;
  std::shared_ptr<LPIPSWithDiscriminator> loss_;
  std::unique_ptr<torch::optim::Adam> opt_ae_, opt_disc_;
};

class VQTask : public Task {
 public:
  VQTask(const YAML::Node& model, double lr) {
    auto tc = target_config(model, "model", {"base_learning_rate"});
    vq_ = VQModel::from_params(tc.params, tc.target);
    auto lc = target_config(tc.params.raw()["lossconfig"], "model.params.lossconfig");
    if (lc.target != "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator")
      throw Error("model.params.lossconfig.target: VQ training needs taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator, got " +
                  lc.target);
    loss_ = VQLPIPSWithDiscriminator::from_params(lc.params);
    vq_->register_module("loss", loss_);
    opt_ae_ = std::make_unique<torch::optim::Adam>(params(0), torch::optim::AdamOptions(lr).betas({0.5, 0.9}));
    opt_disc_ = std::make_unique<torch::optim::Adam>(params(1), torch::optim::AdamOptions(lr).betas({0.5, 0.9}));
  }
  torch::nn::Module& module() override { return *vq_; }
  std::vector<NamedOptimizer> optimizers() override { return {{"opt0", opt_ae_.get()}, {"opt1", opt_disc_.get()}}; }
  std::vector<torch::Tensor> params(int idx) override {
    if (idx == 1) return loss_->discriminator->parameters();
    std::vector<torch::Tensor> v;
    for (auto* m : std::initializer_list<torch::nn::Module*>{vq_->encoder.get(), vq_->decoder.get(), vq_->quantize.get(),
                                                              vq_->quant_conv.get(), vq_->post_quant_conv.get()})
      for (auto& p : m->parameters()) v.push_back(p);
    return v;
  }
  bool active(int idx, int64_t step) override { return idx == 0 || loss_->disc_active(step); }
  LossOut loss(const Batch& b, int idx, int64_t step, torch::Generator&) override {
    auto x = b.image.to(dev);
    if (idx == 1) {
      torch::Tensor rec, ql;
      {
        torch::NoGradGuard ng;
        auto [r, q] = vq_->forward(x);
        rec = r;
        ql = q.loss;
      }
      return loss_->forward(ql, x, rec, 1, step, vq_->decoder->last_layer());
    }
    auto [rec, q] = vq_->forward(x);
    return loss_->forward(q.loss, x, rec, 0, step, vq_->decoder->last_layer());
  }
  void log_images(const std::string& path, const Batch& b, const Settings&) override {
    torch::NoGradGuard ng;
    vq_->eval();
    auto x = b.image.slice(0, 0, std::min<int64_t>(8, b.image.size(0))).to(dev);
    auto rec = vq_->forward(x).first;
    vq_->train();
    io::save_png(path, io::make_grid(io::to_unit_range(torch::cat({x, rec}, 0)).cpu(), x.size(0)),
                 {{"Description", "top: inputs, bottom: reconstructions"}});
  }

 private:
  std::shared_ptr<VQModel> vq_;
  std::shared_ptr<VQLPIPSWithDiscriminator> loss_;
  std::unique_ptr<torch::optim::Adam> opt_ae_, opt_disc_;
};

class DiffusionTask : public Task {
 public:
  DiffusionTask(const YAML::Node& model, double lr, const std::string& vocab) {
    m_ = instantiate_as<LatentDiffusion>(model, "model");
    if (!m_) throw Error("model.target must be LatentDiffusion, DDPM or AutoencoderKL");
    if (m_->first_stage()) m_->first_stage()->eval();
    ce_ = std::dynamic_pointer_cast<ClassEmbedder>(m_->cond_stage());
    if (auto te = std::dynamic_pointer_cast<TextEncoder>(m_->cond_stage())) {
      if (vocab.empty())
        throw Error("training a text-conditioned model needs training.vocab (bpe_simple_vocab_16e6.txt.gz or vocab.json)");
      te->set_tokenizer(std::make_shared<ClipTokenizer>(ClipTokenizer::load(vocab)));
      if (!m_->options().cond_stage_trainable) te->eval();
    }
    // the reference's LatentDiffusion.configure_optimizers: AdamW over the UNet,
    // the cond stage when trainable, and logvar when learned
    opt_ = std::make_unique<FusedAdamW>(params(0), torch::optim::AdamWOptions(lr));
  }
  torch::nn::Module& module() override { return *m_; }
  std::vector<NamedOptimizer> optimizers() override { return {{"opt0", opt_.get()}}; }
  std::vector<torch::Tensor> params(int) override {
    auto v = m_->unet()->parameters();
    if (m_->cond_stage() && m_->options().cond_stage_trainable)
      for (auto& p : m_->cond_stage()->parameters()) v.push_back(p);
    if (m_->options().learn_logvar) v.push_back(m_->logvar);
    return v;
  }

  void prepare(const Dataset& ds, const TransformOptions& tf, const Settings& s) override {
    auto kl = std::dynamic_pointer_cast<AutoencoderKL>(m_->first_stage());
    bool want = s.cache_latents == "true" || (s.cache_latents == "auto" && kl && !tf.random());
    if (s.cache_latents == "true" && tf.random())
      throw Error("training.cache_latents: true needs deterministic transforms (no random crop or flip)");
    if (!want || !kl) return;
    // The first stage is frozen: encode the dataset once and keep the
    // posterior moments; each step still samples from the posterior.
    // Data parallel: each rank encodes a contiguous share, an allreduce (sum
    // over zero-filled rows) gives every rank the whole table.
    torch::NoGradGuard ng;
    kl->eval();
    const int64_t n = ds.size(), bs = 256, lo = n * rank / world, hi = n * (rank + 1) / world;
    std::optional<Progress> prog;
    if (!quiet) prog.emplace("caching latents", (hi - lo + bs - 1) / bs);
    std::vector<torch::Tensor> parts;
    for (int64_t i = lo; i < hi; i += bs) {
      std::vector<torch::Tensor> imgs;
      for (int64_t j = i; j < std::min(hi, i + bs); ++j) imgs.push_back(apply_transforms(ds.get(j).image, tf, 0));
      parts.push_back(kl->quant_conv->forward(kl->encoder->forward(torch::stack(imgs).to(dev))));
      if (prog) prog->update((i - lo) / bs + 1);
    }
    moments_ = torch::cat(parts, 0);
    nn::release_fast_conv(*kl);  // the encoder's packed inference weights are not needed again
    if (dist) {
      auto all = torch::zeros({n, moments_.size(1), moments_.size(2), moments_.size(3)}, moments_.options());
      all.narrow(0, lo, hi - lo).copy_(moments_);
      dist->allreduce_sum(all);
      moments_ = all;
    }
    if (prog) prog->finish(std::to_string(n) + " latents " + c10::str(moments_.sizes().slice(1)));
  }

  torch::Tensor latents(const Batch& b, torch::Generator& g) {
    if (moments_.defined()) {
      DiagonalGaussianDistribution post(moments_.index_select(0, b.index.to(dev)));
      return (post.mean + post.std * randn_rows(post.mean.sizes().vec(), g).to(dev)) * m_->scale_factor.item<double>();
    }
    torch::NoGradGuard ng;
    auto x = b.image.to(dev);
    if (auto kl = std::dynamic_pointer_cast<AutoencoderKL>(m_->first_stage()))
      return kl->encode(x).sample(g) * m_->scale_factor.item<double>();
    return m_->encode_first_stage(x);
  }

  // scale_by_std: 1 / std of the first batch's latents (Rombach et al. 2022, Sec. 4.3.2)
  void on_first_batch(const Batch& b, torch::Generator& g, bool resumed) override {
    if (!m_->options().scale_by_std || resumed) return;
    torch::NoGradGuard ng;
    m_->scale_factor.fill_(1.0);
    auto z = latents(b, g).flatten().to(torch::kFloat64);
    // the std of the global first batch: sums pooled over ranks
    auto st = torch::stack({z.sum(), z.square().sum(), torch::tensor(static_cast<double>(z.numel()), torch::kFloat64)});
    if (dist) dist->allreduce_sum(st);
    const double n = st[2].item<double>(), mean = st[0].item<double>() / n;
    const double var = (st[1].item<double>() - n * mean * mean) / (n - 1);  // unbiased, as torch.std
    m_->scale_factor.fill_(1.0 / std::sqrt(var));
    if (!quiet) std::cerr << "scale_by_std: scale_factor = " << m_->scale_factor.item<double>() << "\n";
  }

  torch::Tensor conditioning(const Batch& b, torch::Generator& g) {
    if (m_->options().conditioning_key.empty()) return {};
    if (ce_) {
      torch::Tensor drop;
      if (ce_->is_training() && ce_->ucg_rate > 0) drop = rand_rows(b.label.size(0), g).lt(ce_->ucg_rate);
      return ce_->embed(b.label.to(dev), drop);
    }
    if (auto te = std::dynamic_pointer_cast<TextEncoder>(m_->cond_stage())) {
      // captions, each dropped to ucg_training's value with its probability
      std::vector<std::string> caps = b.caption;
      const double p = m_->options().ucg_probability;
      auto u = rand_rows(static_cast<int64_t>(caps.size()), g);
      for (size_t i = 0; i < caps.size(); ++i)
        if (p > 0 && u[i].item<double>() < p) caps[i] = m_->options().ucg_value;
      if (!m_->options().cond_stage_trainable) {
        torch::NoGradGuard ng;
        return te->encode(caps);
      }
      return te->encode(caps);
    }
    throw Error("training: conditioning on \"" + m_->options().cond_stage_key + "\" needs a ClassEmbedder cond stage here");
  }

  LossOut loss(const Batch& b, int, int64_t, torch::Generator& g) override {
    auto z = latents(b, g);
    auto c = conditioning(b, g);
    const int64_t n = z.size(0);
    auto t = my_rows(torch::randint(0, m_->schedule().num_timesteps, {n * world}, g, torch::kInt64)).to(dev);
    auto noise = randn_rows(z.sizes().vec(), g).to(dev);
    auto L = m_->p_losses(z, c.defined() ? m_->make_cond(c) : Cond{}, t, noise);
    LossOut out;
    out.loss = L.loss;
    out.log = {{"loss", L.loss.item<double>()}, {"loss_simple", L.loss_simple.item<double>()},
               {"loss_vlb", L.loss_vlb.item<double>()}};
    return out;
  }

  void after_step() override {
    if (m_->model_ema) m_->model_ema->update(m_->model_wrapper());
  }

  void log_images(const std::string& path, const Batch& b, const Settings& s) override {
    torch::NoGradGuard ng;
    m_->eval();
    auto ema = m_->ema_scope();
    const auto& o = m_->options();
    int64_t classes = ce_ ? std::min<int64_t>(ce_->n_classes - (ce_->ucg_rate > 0 ? 1 : 0), 10) : 0;
    auto te = std::dynamic_pointer_cast<TextEncoder>(m_->cond_stage());
    const int64_t per = classes ? 8 : 0;
    const int64_t n = classes ? classes * per : te ? std::min<int64_t>(8, static_cast<int64_t>(b.caption.size())) : 16;
    auto g = torch::make_generator<at::CPUGeneratorImpl>(1234);  // same noise every time: grids compare
    auto noise = torch::randn({n, o.channels, o.image_size, o.image_size}, g).to(dev);
    Cond cond, uncond;
    double scale = 1.0;
    if (ce_) {
      auto labels = torch::arange(classes).repeat_interleave(per).to(dev);  // rows are classes when nrow = per
      cond = m_->make_cond(ce_->forward(labels));
      if (ce_->ucg_rate > 0) {
        uncond = m_->make_cond(ce_->unconditional(n, dev));
        scale = s.sample_cfg;
      }
    }
    if (te) {  // the batch's captions
      std::vector<std::string> caps(b.caption.begin(), b.caption.begin() + n);
      cond = m_->make_cond(te->encode(caps));
      if (o.ucg_probability > 0) {
        uncond = m_->make_cond(te->encode(std::vector<std::string>(n, o.ucg_value)));
        scale = s.sample_cfg;
      }
    }
    GuidedDenoiser d(*m_, cond, uncond, scale);
    SampleOptions so;
    so.sampler = s.sampler;
    so.steps = s.sample_steps;
    so.generator = g;
    auto x = m_->decode_first_stage(sample(d, noise, so));
    ema.reset();
    m_->train();
    if (m_->first_stage()) m_->first_stage()->eval();
    io::save_png(path, io::make_grid(io::to_unit_range(x).cpu(), classes ? per : 4),
                 {{"Description", classes ? "samples with EMA weights, one row per class" : "samples with EMA weights"}});
  }

 private:
  std::shared_ptr<LatentDiffusion> m_;
  std::shared_ptr<ClassEmbedder> ce_;
  std::unique_ptr<torch::optim::AdamW> opt_;
  torch::Tensor moments_;
};

void set_lr(torch::optim::Optimizer& opt, double lr) {
  for (auto& g : opt.param_groups()) g.options().set_lr(lr);
}

}  // namespace

TrainResult train(const YAML::Node& config, const TrainOptions& o) {
  const auto t_start = std::chrono::steady_clock::now();
  YAML::Node cfg = YAML::Clone(config);
  Settings s = read_settings(cfg);
  if (o.max_steps >= 0) s.max_steps = o.max_steps;
  s.quiet = o.quiet;
  torch::manual_seed(s.seed);  // initial weights
  torch::Device dev = s.device == "auto" ? (torch::cuda::is_available() ? torch::kCUDA : torch::kCPU) : torch::Device(s.device);

  // data
  auto dp = cfg["data"] && cfg["data"]["params"] ? cfg["data"]["params"] : YAML::Node();
  if (!dp || !dp["train"]) throw Error("config: data.params.train is required ({target, params} of a dataset)");
  Params D(dp, "data.params");
  s.batch_size = D.get<int64_t>("batch_size", 32);
  s.num_workers = D.get<int>("num_workers", 2);
  D.ignore({"wrap", "validation", "test", "num_val_workers", "shuffle_val_dataloader"});
  auto train_data = make_dataset(D.node("train"), "data.params.train");
  D.check_unused("main.DataModuleFromConfig");

  // model
  auto model_node = cfg["model"];
  if (!model_node) throw Error("config: model is required");
  const double base_lr = model_node["base_learning_rate"] ? model_node["base_learning_rate"].as<double>() : 1e-4;
  const double lr = s.scale_lr ? base_lr * s.batch_size * s.accumulate * o.world : base_lr;
  auto target = target_config(model_node, "model", {"base_learning_rate"}).target;
  std::unique_ptr<Task> task;
  if (target == "ldm.models.autoencoder.AutoencoderKL") task = std::make_unique<AutoencoderTask>(model_node, lr);
  else if (target == "ldm.models.autoencoder.VQModel" || target == "ldm.models.autoencoder.VQModelInterface")
    task = std::make_unique<VQTask>(model_node, lr);
  else task = std::make_unique<DiffusionTask>(model_node, lr, s.vocab);
  task->dev = dev;
  task->quiet = o.quiet || o.rank != 0;
  task->rank = o.rank;
  task->world = o.world;
  std::unique_ptr<Distributed> dist;
  if (o.world > 1) {
    DistEnv de;
    de.rank = o.rank;
    de.world = o.world;
    de.master_addr = o.master_addr;
    de.master_port = o.master_port;
    dist = std::make_unique<Distributed>(de, std::chrono::milliseconds(static_cast<int64_t>(o.dist_timeout_s * 1000)));
    task->dist = dist.get();
  }
  task->module().to(dev);
  task->module().train();
  auto opts = task->optimizers();
  std::function<double(int64_t)> sched = [](int64_t) { return 1.0; };
  std::shared_ptr<LrSchedule> sched_obj;
  if (auto sc = model_node["params"]["scheduler_config"]) {
    auto tc = target_config(sc, "model.params.scheduler_config");
    sched_obj = make_lr_schedule(tc.target, tc.params);
    sched = [sched_obj](int64_t n) { return (*sched_obj)(n); };
  }

  LoaderOptions lo;
  lo.batch_size = s.batch_size;
  lo.seed = s.seed;
  lo.num_workers = s.num_workers;
  lo.rank = o.rank;
  lo.world = o.world;
  DataLoader loader(train_data.ds, train_data.tf, lo);
  if (s.max_steps < 0) s.max_steps = s.max_epochs * loader.batches_per_epoch() / s.accumulate;

  const bool rank0 = o.rank == 0;
  fs::create_directories(o.out_dir);
  std::string config_yaml = YAML::Dump(cfg) + "\n";
  if (rank0) write_file_atomic((fs::path(o.out_dir) / "config.yaml").string(), config_yaml.data(), config_yaml.size());

  // one generator state on every rank (Task::randn_rows slices the rows)
  auto gen = torch::make_generator<at::CPUGeneratorImpl>(s.seed + 1000003ull);
  TrainState st;
  bool resumed = false;
  if (!o.resume.empty()) {
    auto ck = latest_checkpoint(o.resume);
    st = load_checkpoint(ck, task->module(), opts);
    if (st.rng.defined()) gen.set_state(st.rng);
    // the loader's position and the sharding depend on the number of processes
    if (st.extra.count("world_size") && static_cast<int>(st.extra["world_size"]) != o.world)
      throw Error("--resume " + o.resume + ": the run was trained with " +
                  std::to_string(static_cast<int>(st.extra["world_size"])) + " processes, this one has " +
                  std::to_string(o.world) + "; resume with the same number (--nproc / WORLD_SIZE)");
    loader.seek(st.batches);
    resumed = true;
    if (!o.quiet) std::cerr << "resumed from " << ck << " at step " << st.step << "\n";
  }
  if (!o.quiet)
    std::cerr << "training " << target << " on " << train_data.ds->describe() << ", device " << dev << ", lr " << lr
              << (s.scale_lr ? " (base_lr x batch x accumulate x processes)" : "") << ", " << s.max_steps << " steps\n";
  task->prepare(*train_data.ds, train_data.tf, s);
  if (dist) {  // rank 0's weights everywhere (DDP's initial broadcast)
    std::vector<torch::Tensor> state;
    for (auto& p : task->module().parameters()) state.push_back(p.data());
    for (auto& b : task->module().buffers()) state.push_back(b);
    dist->broadcast(state);
  }

  std::unique_ptr<MetricsLogger> metrics;
  if (rank0) metrics = std::make_unique<MetricsLogger>(o.out_dir);
  TrainResult res;
  res.last_checkpoint = resumed ? latest_checkpoint(o.resume) : "";
  Progress prog("train", s.max_steps, st.step);
  double window_loss = 0;
  int64_t window_n = 0;
  auto window_t0 = std::chrono::steady_clock::now();
  Batch last;
  std::map<int, std::unique_ptr<GradSync>> syncs;  // per optimizer
  while (st.step < s.max_steps) {
    std::vector<Batch> bs;
    for (int a = 0; a < s.accumulate; ++a) bs.push_back(loader.next());
    if (st.step == 0 && st.batches == 0) task->on_first_batch(bs[0], gen, resumed);
    st.epoch = bs.back().epoch;
    const double lr_now = lr * sched(st.step);
    for (auto& no : opts) set_lr(*no.opt, lr_now);
    std::map<std::string, double> logs;
    for (int idx = 0; idx < static_cast<int>(opts.size()); ++idx) {
      if (!task->active(idx, st.step)) continue;
      // set to none: backward then hands its gradient over instead of adding it
      // to zeros (two passes over the weights' size saved; PyTorch 2's default)
      task->module().zero_grad(/*set_to_none=*/true);
      if (dist && !syncs.count(idx)) syncs[idx] = std::make_unique<GradSync>(*dist, task->params(idx));
      for (size_t mb = 0; mb < bs.size(); ++mb) {
        const auto& b = bs[mb];
        if (dist && mb + 1 == bs.size()) syncs[idx]->arm();  // the last backward reduces while it runs
        LossOut L;
        {
          Autocast ac(s.precision, dev);
          L = task->loss(b, idx, st.step, gen);
        }
        double v = L.loss.item<double>();
        if (dist) {  // the global batch's mean loss and logs on every rank (one NaN stops all ranks alike)
          std::vector<double> vals{v};
          for (auto& [k, val] : L.log) vals.push_back(val);
          auto t = torch::tensor(vals, torch::kFloat64);
          dist->allreduce_sum(t);
          t.div_(o.world);
          v = t[0].item<double>();
          int i = 1;
          for (auto& [k, val] : L.log) val = t[i++].item<double>();
        }
        if (!std::isfinite(v)) {
          throw Error("step " + std::to_string(st.step) + ": loss is " + std::to_string(v) + " (optimizer " +
                      std::to_string(idx) + "); stopped. Last good checkpoint: " +
                      (res.last_checkpoint.empty() ? std::string("none yet") : res.last_checkpoint));
        }
        (L.loss / s.accumulate).backward();
        for (auto& [k, val] : L.log) logs[(idx == 0 ? "train/" : "train/") + k] += val / s.accumulate;
        if (idx == 0) {
          window_loss += v / s.accumulate;
        }
      }
      if (dist) syncs[idx]->finish();
      if (s.grad_clip > 0) torch::nn::utils::clip_grad_norm_(task->params(idx), s.grad_clip);
      opts[idx].opt->step();
    }
    task->after_step();
    ++window_n;
    st.batches += s.accumulate;
    ++st.step;
    last = bs.back();
    res.losses.push_back(logs.count("train/loss") ? logs["train/loss"] : logs["train/total_loss"]);
    if (rank0 && (st.step % s.log_every == 0 || st.step == s.max_steps)) {
      double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - window_t0).count();
      logs["lr"] = lr_now;
      logs["epoch"] = static_cast<double>(st.epoch);
      logs["it_per_s"] = window_n / el;
      logs["samples_per_s"] = window_n * s.batch_size * s.accumulate * o.world / el;
      metrics->log(st.step, logs);
      window_t0 = std::chrono::steady_clock::now();
      window_n = 0;
    }
    if (!o.quiet && rank0) {
      char extra[96];
      std::snprintf(extra, sizeof extra, "loss %.4f  lr %.2e", res.losses.back(), lr_now);
      prog.update(st.step, extra);
    }
    if (rank0 && s.image_every > 0 && st.step % s.image_every == 0) {
      fs::create_directories(fs::path(o.out_dir) / "images");
      char name[64];
      std::snprintf(name, sizeof name, "step-%09lld.png", (long long)st.step);
      task->log_images((fs::path(o.out_dir) / "images" / name).string(), last, s);
      nn::release_fast_conv(task->module());  // packed inference weights: stale after the next step
    }
    if (rank0 && (st.step % s.checkpoint_every == 0 || st.step == s.max_steps)) {
      st.rng = gen.get_state();
      st.extra["world_size"] = o.world;
      res.last_checkpoint = save_checkpoint(o.out_dir, task->module(), opts, st, config_yaml, s.keep);
    }
    (void)window_loss;
  }
  if (!o.quiet && rank0) prog.finish();
  res.steps = st.step;
  res.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  res.peak_rss_gb = peak_rss_gb();
  return res;
}

}  // namespace ldm

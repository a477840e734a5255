// ldm bench: the work people compare Stable Diffusion tools on, at SD 1.5's
// shapes with random weights, each in its own process (so each peak memory
// is that work's alone): median seconds, achieved GFLOP/s (conv + matmul
// FLOPs counted by libtorch's profiler), peak RSS, and the machine's practical
// peak (sgemm, 3x3 conv) measured in the same run. Peers run in the same
// invocation when given: the original PyTorch code (--reference CHECKOUT, as
// is and with tcmalloc preloaded), diffusers on PyTorch 2.x and OpenVINO
// (--peers-venv DIR), Intel's extension for PyTorch (--ipex-venv DIR) and a
// stable-diffusion.cpp binary (--sdcpp).
#include <torch/csrc/autograd/profiler_legacy.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <tuple>

#include "ldm/error.h"
#include "ldm/io/atomic_file.h"
#include "ldm/models/autoencoder.h"
#include "ldm/models/diffusion/ddpm.h"
#include "ldm/models/diffusion/load.h"
#include "ldm/models/diffusion/sd_configs.h"
#include "ldm/modules/attention.h"
#include "ldm/modules/diffusionmodules/openaimodel.h"
#include "ldm/modules/encoders/clip_text.h"
#include "ldm/modules/fast_conv.h"
#include "ldm/modules/layers.h"
#include "ldm/train/distributed.h"
#include "ldm/train/optim.h"
#include "ldm/train/task.h"
#include "ldm/util/config.h"
#include "ldm/models/registry.h"
#include "ldm/util/autocast.h"
#include "ldm/util/progress.h"
#include "tools/ldm/bench_sdcpp.h"
#include "tools/ldm/bench_spawn.h"
#include "tools/ldm/commands.h"

namespace ldm::cli {
namespace {
namespace fs = std::filesystem;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

struct Opts {
  std::string only, child, weights, weights16, vocab, reference, sdcpp, json_out, python = "/usr/bin/python3", peers_venv,
      ipex_venv;
  std::string fashion_config = "configs/fashion/ldm.yaml", fashion_ae_config = "configs/fashion/autoencoder.yaml";
  int runs = 3;
  int ranks = 1;  // training works: data-parallel ranks of cores/ranks threads, as `make run` trains
};

// The training works as `ldm train --nproc N` runs them when this process is
// one of N ranks (launch_local's environment): each rank takes its share of
// the batch and the gradients are averaged by GradSync, as the trainer does.
class DataParallel {
 public:
  DataParallel() {
    const auto e = dist_env_from_environment();
    if (e.world > 1) dist_ = std::make_unique<Distributed>(e, std::chrono::seconds(120));
  }
  int world() const { return dist_ ? dist_->world() : 1; }
  // this rank's rows of a global batch of `bs` (run_bench refused counts that do not split it)
  int64_t share(int64_t bs) const { return bs / world(); }
  // the backward around `backward` averages the gradients of optimizer i's parameters
  void backward(size_t i, const std::vector<torch::Tensor>& params, const std::function<void()>& backward) {
    if (!dist_) return backward();
    if (syncs_.size() <= i) syncs_.resize(i + 1);
    if (!syncs_[i]) syncs_[i] = std::make_unique<GradSync>(*dist_, params);
    syncs_[i]->arm();
    backward();
    syncs_[i]->finish();
  }

 private:
  std::unique_ptr<Distributed> dist_;
  std::vector<std::unique_ptr<GradSync>> syncs_;
};

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

// conv + matmul + attention GFLOP of fn (convolutions counted by nn::Conv,
// matmuls by libtorch's profiler, our linear and fused attention from their shapes; a
// training step's backward convs are not), and where the
// time goes: outermost aten ops and autograd nodes grouped into conv / matmul /
// softmax / attention (our fused kernel) / norm / other.
struct Profile {
  double gflop = 0;
  std::map<std::string, double> ms;
  std::map<std::string, std::pair<double, int>> ops;
};
Profile profile(const std::function<void()>& fn) {
  namespace prof = torch::autograd::profiler;
  torch::profiler::impl::ProfilerConfig cfg(torch::profiler::impl::ProfilerState::CPU, /*shapes=*/true,
                                            /*memory=*/false, /*stack=*/false, /*flops=*/true);
  std::atomic<double> conv_flops{0};
  nn::set_conv_flop_counter(&conv_flops);
  prof::enableProfilerLegacy(cfg);
  fn();
  auto lists = prof::disableProfilerLegacy();
  nn::set_conv_flop_counter(nullptr);
  Profile p;
  p.gflop = conv_flops.load() / 1e9;
  const char* ops_env = std::getenv("LDM_BENCH_OPS");  // every op's time and count, for digging
  const bool by_shapes = ops_env && std::string(ops_env) == "shapes";  // ... split by input shapes
  const bool top_only = ops_env && std::string(ops_env) == "top";  // ... only the outermost, as the groups count
  // backward nodes count with their forward op's family (ConvolutionBackward0 is conv time)
  auto group = [](std::string n) -> std::string {
    std::transform(n.begin(), n.end(), n.begin(), [](unsigned char ch) { return std::tolower(ch); });
    if (n.find("conv") != std::string::npos) return "conv";
    static const std::set<std::string> kMatmulOps = {"aten::mm",     "aten::addmm",  "aten::bmm",   "aten::baddbmm",
                                                     "aten::matmul", "aten::linear", "aten::einsum",
                                                     "ldm::linear"};
    if (kMatmulOps.count(n) || n.find("mmbackward") != std::string::npos || n.find("smallbmm") != std::string::npos)
      return "matmul";
    if (n.find("softmax") != std::string::npos) return "softmax";
    if (n == "ldm::attention_fused") return "attention";  // the fused kernel
    if (n.find("norm") != std::string::npos) return "norm";
    return "other";
  };
  for (auto& list : lists) {
    std::vector<const prof::LegacyEvent*> stack;
    for (auto& e : list) {
      const std::string name = e.name();
      if (e.kind() == prof::EventKind::PushRange) {
        if (name == "aten::mm" || name == "aten::addmm" || name == "aten::bmm" || name == "aten::baddbmm")
          p.gflop += const_cast<prof::LegacyEvent&>(e).flops() / 1e9;
        if (name == "ldm::linear") {  // x [..., k], w [n, k]: 2 FLOPs a product
          const auto sh = e.shapes();
          if (sh.size() == 2 && sh[1].size() == 2) {
            double rows = 1;
            for (size_t i = 0; i + 1 < sh[0].size(); ++i) rows *= sh[0][i];
            p.gflop += 2.0 * rows * sh[1][0] * sh[1][1] / 1e9;
          }
        }
        if (name == "ldm::attention_fused") {
          // q [B, H, N, d], k [B, H, M, d]: q k^T and p v, 2 FLOPs a product
          const auto sh = e.shapes();
          if (sh.size() == 2 && sh[0].size() == 4 && sh[1].size() == 4)
            p.gflop += 4.0 * sh[0][0] * sh[0][1] * sh[0][2] * sh[0][3] * sh[1][2] / 1e9;
        }
        stack.push_back(&e);
      } else if (e.kind() == prof::EventKind::PopRange && !stack.empty()) {
        const auto* start = stack.back();
        stack.pop_back();
        if (stack.empty()) p.ms[group(start->name())] += start->cpuElapsedUs(e) / 1e3;
        if (ops_env && (!top_only || stack.empty())) {  // self-inclusive times
          std::string key = start->name();
          if (by_shapes) {
            for (const auto& sh : start->shapes()) {
              key += " [";
              for (size_t i = 0; i < sh.size(); ++i) key += (i ? "," : "") + std::to_string(sh[i]);
              key += "]";
            }
          }
          auto& [ms, n] = p.ops[key];
          ms += start->cpuElapsedUs(e) / 1e3;
          ++n;
        }
      }
    }
  }
  return p;
}

// Times fn: one warm-up, then `runs` timed calls; the profile of one more.
// conv_ab: inference works with convolutions also time libtorch's conv
// (nn::FastConv::Aten), interleaved with ours in the same process, so the
// fast path's ratio is not at the mercy of this machine's drift. Warm-up: 3
// calls (a layer moves to Winograd on its third).
json time_work(const std::function<void()>& fn, int runs, bool with_profile = true, bool conv_ab = false) {
  const nn::FastConv mode = nn::fast_conv();
  conv_ab = conv_ab && mode != nn::FastConv::Aten && nn::fast_conv_available();
  auto t_first = Clock::now();
  fn();
  const double first = seconds_since(t_first);  // a one-off call: weights packed/transformed inside
  for (int i = 1; i < (conv_ab ? 3 : 1); ++i) fn();
  std::vector<double> t, t_aten;
  for (int i = 0; i < runs; ++i) {
    auto t0 = Clock::now();
    fn();
    t.push_back(seconds_since(t0));
    if (conv_ab) {
      nn::set_fast_conv(nn::FastConv::Aten);
      t0 = Clock::now();
      fn();
      t_aten.push_back(seconds_since(t0));
      nn::set_fast_conv(mode);
    }
  }
  json r = {{"median_s", median(t)}, {"runs_s", t}, {"first_s", first}};
  if (conv_ab) r["libtorch_conv"] = {{"median_s", median(t_aten)}, {"runs_s", t_aten}};
  if (with_profile) {
    auto p = profile(fn);
    r["gflop"] = p.gflop;
    r["gflops_per_s"] = p.gflop / median(t);
    r["profile_ms"] = p.ms;
    for (auto& [name, v] : p.ops) std::fprintf(stderr, "op %-40s %9.1f ms %5d calls\n", name.c_str(), v.first, v.second);
  }
  return r;
}

bool is_fashion_training(const std::string& work) { return work.rfind("train_fashion", 0) == 0; }

YAML::Node sd15(const std::string& key) { return YAML::Load(builtin_config("v1-inference.yaml"))["model"]["params"][key]; }

std::shared_ptr<UNetModel> sd15_unet(bool checkpointing = false) {
  auto node = YAML::Clone(sd15("unet_config"));
  node["params"]["use_checkpoint"] = checkpointing;
  return instantiate_as<UNetModel>(node, "v1-inference.yaml: unet_config");
}

json run_child_work(const Opts& o) {
  torch::manual_seed(0);
  const std::string& w = o.child;
  if (w == "peak_gemm") {
    auto a = torch::randn({2048, 2048}), b = torch::randn({2048, 2048}), c = torch::empty({2048, 2048});
    auto r = time_work([&] { torch::mm_out(c, a, b); }, o.runs, false);
    r["gflop"] = 2.0 * 2048 * 2048 * 2048 / 1e9;
    r["gflops_per_s"] = r["gflop"].get<double>() / r["median_s"].get<double>();
    return r;
  }
  if (w == "peak_gemm_bf16") {  // AMX / AVX512-BF16 where the CPU has them
    auto a = torch::randn({2048, 2048}).to(torch::kBFloat16), b = torch::randn({2048, 2048}).to(torch::kBFloat16);
    auto c = torch::empty({2048, 2048}, torch::kBFloat16);
    auto r = time_work([&] { torch::mm_out(c, a, b); }, o.runs, false);
    r["gflop"] = 2.0 * 2048 * 2048 * 2048 / 1e9;
    r["gflops_per_s"] = r["gflop"].get<double>() / r["median_s"].get<double>();
    return r;
  }
  if (w == "peak_conv640" || w == "peak_conv1280") {
    const int64_t c = w == "peak_conv640" ? 640 : 1280, s = w == "peak_conv640" ? 32 : 16;
    auto x = torch::randn({2, c, s, s}), k = torch::randn({c, c, 3, 3}) * 0.01;
    torch::NoGradGuard ng;
    auto r = time_work([&] { (void)torch::conv2d(x, k, {}, 1, 1); }, o.runs, false);
    r["gflop"] = 2.0 * 2 * c * s * s * c * 9 / 1e9;
    r["gflops_per_s"] = r["gflop"].get<double>() / r["median_s"].get<double>();
    return r;
  }
  const bool bf16 = w.size() > 5 && w.substr(w.size() - 5) == "_bf16";
  // the training works autocast their forward only, as the trainer does
  Autocast ac(bf16 && !is_fashion_training(w) ? "bf16" : "32", torch::kCPU);
  if (w == "attn4096" || w == "attn4096_bf16") {  // the UNet's largest self-attention at 512x512: 16 heads x 4096 tokens
    auto dt = bf16 ? torch::kBFloat16 : torch::kFloat32;
    auto q = torch::randn({16, 4096, 40}).to(dt), k = torch::randn({16, 4096, 40}).to(dt), v = torch::randn({16, 4096, 40}).to(dt);
    torch::NoGradGuard ng;
    auto r = time_work([&] { (void)attention(q, k, v, 1.0 / std::sqrt(40.0)); }, o.runs, false);
    r["gflop"] = 2.0 * 2 * 16 * 4096.0 * 4096 * 40 / 1e9;
    r["gflops_per_s"] = r["gflop"].get<double>() / r["median_s"].get<double>();
    return r;
  }
  if (w.rfind("unet256", 0) == 0 || w.rfind("unet512", 0) == 0) {
    const int64_t l = w.rfind("unet256", 0) == 0 ? 32 : 64;
    auto unet = sd15_unet();
    unet->eval();
    if (bf16) unet->to(torch::kBFloat16);
    torch::NoGradGuard ng;
    auto x = torch::randn({2, 4, l, l}), ctx = torch::randn({2, 77, 768});
    auto t = torch::full({2}, 500.0);
    return time_work([&] { (void)unet->forward(x, t, ctx); }, o.runs, true, true);
  }
  if (w.rfind("vae256", 0) == 0 || w.rfind("vae512", 0) == 0) {
    const int64_t l = w.rfind("vae256", 0) == 0 ? 32 : 64;
    auto vae = instantiate_as<AutoencoderKL>(sd15("first_stage_config"), "first_stage_config");
    vae->eval();
    if (bf16) vae->to(torch::kBFloat16);
    torch::NoGradGuard ng;
    auto z = torch::randn({1, 4, l, l});
    return time_work([&] { (void)vae->decode(z); }, o.runs, true, true);
  }
  if (w == "clip") {
    auto te = instantiate_as<TextEncoder>(sd15("cond_stage_config"), "cond_stage_config");
    te->eval();
    torch::NoGradGuard ng;
    auto ids = torch::randint(1, 49407, {2, 77}, torch::kInt64);
    return time_work([&] { (void)te->encode_ids(ids); }, o.runs);
  }
  if (w == "train256" || w == "train256_ckpt") {
    auto unet = sd15_unet(w == "train256_ckpt");
    unet->train();
    FusedAdamW opt(unet->parameters(), torch::optim::AdamWOptions(1e-5));
    auto x = torch::randn({1, 4, 32, 32}), ctx = torch::randn({1, 77, 768}), target = torch::randn({1, 4, 32, 32});
    auto t = torch::full({1}, 500.0);
    auto step = [&] {
      unet->zero_grad(/*set_to_none=*/true);  // as the trainer
      torch::mse_loss(unet->forward(x, t, ctx), target).backward();
      opt.step();
    };
    return time_work(step, std::max(2, o.runs - 1));
  }
  if (w == "train_fashion" || w == "train_fashion_bf16") {
    auto cfg = load_yaml(o.fashion_config);
    auto model = YAML::Clone(cfg["model"]);
    model["params"]["first_stage_config"]["params"].remove("ckpt_path");  // random first stage: only the UNet step counts
    auto m = instantiate_as<LatentDiffusion>(model, o.fashion_config + ": model");
    m->train();
    FusedAdamW opt(m->unet()->parameters(), torch::optim::AdamWOptions(1e-4));
    DataParallel dp;
    const int64_t bs = cfg["data"]["params"]["batch_size"].as<int64_t>(), local = dp.share(bs);
    const auto& mo = m->options();
    auto z = torch::randn({local, mo.channels, mo.image_size, mo.image_size});
    auto labels = torch::randint(0, 10, {local}, torch::kInt64);
    auto gen = torch::make_generator<at::CPUGeneratorImpl>(0);
    auto step = [&] {
      m->zero_grad(/*set_to_none=*/true);
      torch::Tensor loss;
      {  // as the trainer: autocast over the forward only
        Autocast fwd(bf16 ? "bf16" : "32", torch::kCPU);
        loss = m->training_loss(z, m->make_cond(m->get_learned_conditioning(labels)), gen);
      }
      dp.backward(0, m->unet()->parameters(), [&] { loss.backward(); });
      opt.step();
    };
    auto r = time_work(step, std::max(5, o.runs * 3));
    r["samples_per_s"] = bs / r["median_s"].get<double>();
    return r;
  }
  if (w == "train_fashion_ae" || w == "train_fashion_ae_bf16") {  // the trainer's autoencoder task: both optimizers' steps as the trainer runs them
    auto cfg = load_yaml(o.fashion_ae_config);
    DataParallel dp;
    const int64_t bs = cfg["data"]["params"]["batch_size"].as<int64_t>(), local = dp.share(bs);
    auto task = make_autoencoder_task(cfg["model"], cfg["model"]["base_learning_rate"].as<double>() * bs);
    task->module().train();
    const auto& dd = cfg["model"]["params"]["ddconfig"];
    const int64_t res = dd["resolution"].as<int64_t>();
    Batch b;
    b.image = torch::rand({local, dd["in_channels"].as<int64_t>(), res, res}) * 2 - 1;
    auto gen = torch::make_generator<at::CPUGeneratorImpl>(0);
    auto opts = task->optimizers();
    auto step = [&] {
      for (size_t i = 0; i < opts.size(); ++i) {
        if (!task->active(static_cast<int>(i), 1)) continue;
        task->module().zero_grad(/*set_to_none=*/true);
        torch::Tensor loss;
        {
          Autocast fwd(bf16 ? "bf16" : "32", torch::kCPU);
          loss = task->loss(b, static_cast<int>(i), 1, gen).loss;
        }
        dp.backward(i, task->params(static_cast<int>(i)), [&] { loss.backward(); });
        opts[i].opt->step();
      }
    };
    auto r = time_work(step, std::max(5, o.runs * 3));
    r["samples_per_s"] = bs / r["median_s"].get<double>();
    return r;
  }
  throw Error("bench: unknown work \"" + w + "\"");
}

// The JSON line a child printed after "RESULT ".
json result_of(const Spawned& s, const std::string& what) {
  auto p = s.out.rfind("RESULT ");
  if (!ok(s) || p == std::string::npos) {
    const std::string tail = output_tail(s);
    throw Error("bench: " + what + " failed: " + tail);
  }
  auto r = json::parse(s.out.substr(p + 7, s.out.find('\n', p) - p - 7));
  r["peak_gb"] = s.peak_gb;
  return r;
}

std::string find_tcmalloc() {
  for (const char* p : {"/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4", "/usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4"})
    if (fs::exists(p)) return p;
  return "";
}

// A random-weight SD 1.5 file of the real shapes, made by `ldm init` once.
std::string ensure_weights(const std::string& given, const std::string& dtype) {
  if (!given.empty()) return given;
  const char* home = std::getenv("HOME");
  fs::path dir = std::getenv("XDG_CACHE_HOME") ? fs::path(std::getenv("XDG_CACHE_HOME")) / "ldm"
                                                : fs::path(home ? home : "/tmp") / ".cache" / "ldm";
  fs::create_directories(dir);
  auto file = (dir / ("sd15_random_" + dtype + ".safetensors")).string();
  if (fs::exists(file)) return file;
  std::cerr << "bench: writing " << file << " (random SD 1.5 weights, " << dtype << ")\n";
  auto s = spawn({self_exe(), "init", "--config", "v1-inference.yaml", "--dtype", dtype, file});
  if (!ok(s)) throw Error("bench: ldm init failed: " + s.out);
  return file;
}

const std::vector<std::pair<std::string, std::string>> kWork = {
    {"peak_gemm", "sgemm 2048^3 (practical peak)"},
    {"peak_gemm_bf16", "bf16 GEMM 2048^3 (practical bf16 peak)"},
    {"peak_conv640", "3x3 conv 640ch 32x32, batch 2 (practical peak)"},
    {"peak_conv1280", "3x3 conv 1280ch 16x16, batch 2"},
    {"attn4096", "attention, 16 heads x 4096 tokens x 40 (UNet 512x512)"},
    {"unet256", "UNet step with CFG (2 images), 256x256"},
    {"unet512", "UNet step with CFG (2 images), 512x512"},
    {"vae256", "VAE decode 256x256"},
    {"vae512", "VAE decode 512x512"},
    {"clip", "CLIP text encode, 2 prompts"},
    {"txt2img256", "txt2img 256x256, 5 steps euler_a, CFG (whole command)"},
    {"txt2img256_fp16", "txt2img 256x256, 5 steps, fp16 weights file"},
    {"attn4096_bf16", "attention, 16 heads x 4096 tokens x 40, bf16"},
    {"unet256_bf16", "UNet step with CFG, 256x256, --precision bf16"},
    {"unet512_bf16", "UNet step with CFG, 512x512, --precision bf16"},
    {"vae256_bf16", "VAE decode 256x256, --precision bf16"},
    {"vae512_bf16", "VAE decode 512x512, --precision bf16"},
    {"txt2img256_bf16", "txt2img 256x256, 5 steps, fp16 file, --precision bf16"},
    {"train256", "training step, SD 1.5 UNet 256x256, batch 1, AdamW"},
    {"train256_ckpt", "the same with gradient checkpointing"},
    {"train_fashion", "training step, configs/fashion/ldm.yaml (UNet + class cond)"},
    {"train_fashion_ae", "training step, configs/fashion/autoencoder.yaml (both optimizers)"},
    {"train_fashion_bf16", "the same LDM step, bf16 autocast (as make run trains it)"},
    {"train_fashion_ae_bf16", "the same autoencoder step, bf16 autocast"},
};
// the works the reference script runs (bench/reference_bench.py)
const std::vector<std::string> kRefWork = {"unet256",  "unet512",       "vae256",          "vae512",
                                           "train256", "train_fashion", "train_fashion_ae",
                                           "train_fashion_bf16", "train_fashion_ae_bf16"};
// the works bench/peers_bench.py runs in diffusers on PyTorch 2.x
const std::vector<std::string> kPeerWork = {"attn4096",     "unet256",       "unet512",      "vae256",
                                            "vae512",       "attn4096_bf16", "unet256_bf16", "unet512_bf16",
                                            "vae256_bf16",  "vae512_bf16"};

// A peer process's RESULT kept in r[key] and printed as "label SECONDS (xOURS/THEIRS)";
// a peer that fails is reported and the bench goes on.
void record_peer(const Spawned& s, const std::string& key, const std::string& label, const std::string& what, json& r,
                 std::string& peers) {
  try {
    auto pr = result_of(s, what);
    r[key] = pr;
    char b[96];
    std::snprintf(b, sizeof b, "%s %.2f (x%.2f) ", label.c_str(), pr["median_s"].get<double>(),
                  r["median_s"].get<double>() / pr["median_s"].get<double>());
    peers += b;
  } catch (const Error& e) {
    peers += label + " failed ";
    r[key] = {{"error", e.what()}};
  }
}

struct PeerRuntime {
  std::string venv, name;  // bench/peers_bench.py --runtime NAME with VENV/bin/python
};

// The runtimes bench/peers_bench.py runs: diffusers on PyTorch 2.x from
// --peers-venv, OpenVINO where setup_peers.sh installed it there, and Intel's
// extension for PyTorch from --ipex-venv (it pins an older PyTorch: its own
// environment, bench/setup_ipex.sh).
std::vector<PeerRuntime> peer_runtimes(const Opts& o) {
  std::vector<PeerRuntime> r;
  if (!o.peers_venv.empty()) {
    r.push_back({o.peers_venv, "diffusers"});
    if (ok(spawn({(fs::path(o.peers_venv) / "bin" / "python").string(), "-c", "import openvino"})))
      r.push_back({o.peers_venv, "openvino"});
  }
  if (!o.ipex_venv.empty()) r.push_back({o.ipex_venv, "ipex"});
  return r;
}

// The work in each peer runtime, same threads and runs.
void run_peer(const Opts& o, const std::vector<PeerRuntime>& runtimes, const std::string& name, json& r,
              std::string& peers) {
  if (!std::count(kPeerWork.begin(), kPeerWork.end(), name)) return;
  fs::path script = fs::path(LDM_SOURCE_DIR) / "bench" / "peers_bench.py";
  for (const auto& rt : runtimes) {
    if (rt.name != "diffusers" && name.rfind("attn", 0) == 0) continue;  // a kernel, not a model to compile or optimize
    auto s = spawn({(fs::path(rt.venv) / "bin" / "python").string(), script.string(), "--work", name, "--runs",
                    std::to_string(o.runs), "--threads", std::to_string(torch::get_num_threads()), "--runtime",
                    rt.name});
    record_peer(s, rt.name, rt.name, rt.name + " (" + rt.venv + ")", r, peers);
  }
}

// Each work's GFLOP/s as a fraction of the practical peaks measured in this
// run: fp32 works against sgemm and the 3x3 convolution, bf16 works against
// the bf16 GEMM.
void print_fraction_of_peak(const json& all) {
  for (auto& [k, v] : all.items()) {
    if (!v.contains("gflops_per_s") || k.rfind("peak_", 0) == 0) continue;
    const bool bf16 = k.size() > 5 && k.substr(k.size() - 5) == "_bf16";
    std::string line;
    for (const char* peak : bf16 ? std::vector<const char*>{"peak_gemm_bf16"}
                                 : std::vector<const char*>{"peak_gemm", "peak_conv640"}) {
      if (!all.contains(peak)) continue;
      const double p = all[peak]["gflops_per_s"].get<double>();
      char b[96];
      std::snprintf(b, sizeof b, "%s%5.1f%% of %s (%.1f GFLOP/s)", line.empty() ? "" : ", ",
                    100 * v["gflops_per_s"].get<double>() / p, peak, p);
      line += b;
    }
    if (!line.empty())
      std::printf("fraction of peak %-14s %6.1f GFLOP/s = %s\n", k.c_str(), v["gflops_per_s"].get<double>(), line.c_str());
  }
}

// A peer given but missing fails at once, not after minutes of our own works.
void check_peer_paths(const Opts& o) {
  if (!o.sdcpp.empty() && !can_execute(o.sdcpp))
    throw Error("--sdcpp " + o.sdcpp + ": not an executable file (bench/setup_sdcpp.sh builds stable-diffusion.cpp's sd-cli)");
  using Venv = std::tuple<std::string, std::string, std::string>;  // flag, directory, the script that makes it
  for (const auto& [flag, dir, setup] :
       {Venv{"--peers-venv", o.peers_venv, "setup_peers.sh"}, Venv{"--ipex-venv", o.ipex_venv, "setup_ipex.sh"}})
    if (!dir.empty() && access((fs::path(dir) / "bin" / "python").c_str(), X_OK) != 0)
      throw Error(flag + " " + dir + ": no bin/python in it (bench/" + setup + " makes the environment)");
  if (!o.reference.empty() && !fs::is_directory(o.reference))
    throw Error("--reference " + o.reference + ": not a directory (a checkout of the original code)");
}

void run_bench(const Opts& o) {
  std::vector<std::string> works;
  if (o.only.empty()) {
    for (auto& [k, _] : kWork) works.push_back(k);
  } else {
    std::stringstream ss(o.only);
    for (std::string k; std::getline(ss, k, ',');) {
      if (std::none_of(kWork.begin(), kWork.end(), [&](auto& w) { return w.first == k; })) {
        std::string all;
        for (auto& [n, _] : kWork) all += (all.empty() ? "" : ", ") + n;
        throw Error("--only: unknown work \"" + k + "\" (have: " + all + ")");
      }
      works.push_back(k);
    }
  }
  check_peer_paths(o);
  for (auto& w : works)  // before any work runs: the ranks split each training config's batch
    if (is_fashion_training(w) && o.ranks > 1) {
      const std::string& cfg = w.find("_ae") != std::string::npos ? o.fashion_ae_config : o.fashion_config;
      const auto bs = load_yaml(cfg)["data"]["params"]["batch_size"].as<int64_t>();
      if (bs % o.ranks)
        throw Error("--ranks " + std::to_string(o.ranks) + ": " + cfg + "'s batch of " + std::to_string(bs) +
                    " does not split evenly between the ranks");
    }
  const std::string tcm = find_tcmalloc();
  const auto runtimes = peer_runtimes(o);
  std::unique_ptr<SdcppPeer> sdcpp;
  if (!o.sdcpp.empty()) sdcpp = std::make_unique<SdcppPeer>(o.sdcpp, ensure_weights(o.weights, "fp32"), torch::get_num_threads());
  json all = json::object();
  std::printf("%-58s %9s %9s %8s %s\n", "work (SD 1.5 shapes, fp32, random weights)", "median s", "GFLOP/s", "peak GB",
              "peers (s, ours/theirs)");
  for (auto& name : works) {
    const std::string desc = std::find_if(kWork.begin(), kWork.end(), [&](auto& w) { return w.first == name; })->second;
    json r;
    if (name.rfind("txt2img", 0) == 0) {
      auto weights = ensure_weights(name == "txt2img256" ? o.weights : o.weights16, name == "txt2img256" ? "fp32" : "fp16");
      const bool bf16 = name == "txt2img256_bf16";
      std::vector<std::string> args = {self_exe(), "txt2img", "-m", weights, "-p", "a lighthouse at dusk, oil painting",
                                       "-W", "256", "-H", "256", "--steps", "5", "--cfg-scale", "7",
                                       "-o", (fs::temp_directory_path() / "ldm_bench_txt2img.png").string()};
      if (!o.vocab.empty()) args.insert(args.end(), {"--vocab", o.vocab});
      if (bf16) args.insert(args.end(), {"--precision", "bf16"});
      auto s = spawn(args);
      if (!ok(s)) throw Error("bench: txt2img failed: " + output_tail(s));
      r = {{"median_s", s.wall_s}, {"peak_gb", s.peak_gb}, {"weights_gb", fs::file_size(weights) / 1e9}};
    } else {
      std::vector<std::string> args = {self_exe(), "bench", "--child", name, "--runs", std::to_string(o.runs),
                                       "--fashion-config", o.fashion_config, "--fashion-ae-config",
                                       o.fashion_ae_config};
      if (is_fashion_training(name)) args.insert(args.end(), {"--ranks", std::to_string(o.ranks)});
      r = result_of(spawn(args), name);
    }
    std::string peers;
    if (!o.reference.empty() && std::count(kRefWork.begin(), kRefWork.end(), name)) {
      fs::path script = fs::path(LDM_SOURCE_DIR) / "bench" / "reference_bench.py";
      for (bool with_tcm : {false, true}) {
        if (with_tcm && tcm.empty()) continue;
        std::vector<std::string> env;
        if (with_tcm) env.push_back("LD_PRELOAD=" + tcm);
        std::vector<std::string> args = {o.python, script.string(), "--repo", o.reference, "--work", name, "--runs",
                                         std::to_string(o.runs), "--threads", std::to_string(torch::get_num_threads()),
                                         "--fashion-config", o.fashion_config, "--fashion-ae-config", o.fashion_ae_config};
        if (is_fashion_training(name)) args.insert(args.end(), {"--ranks", std::to_string(o.ranks)});
        auto s = spawn(args, env);
        const std::string key = with_tcm ? "reference_tcmalloc" : "reference";
        record_peer(s, key, with_tcm ? "ref+tcmalloc" : "ref", "the reference (" + key + ")", r, peers);
      }
    }
    run_peer(o, runtimes, name, r, peers);
    if (sdcpp) sdcpp->add(name, r, peers);
    char gf[32] = "-";
    if (r.contains("gflops_per_s")) std::snprintf(gf, sizeof gf, "%.1f", r["gflops_per_s"].get<double>());
    std::printf("%-58s %9.3f %9s %8.2f %s\n", desc.c_str(), r["median_s"].get<double>(), gf, r["peak_gb"].get<double>(),
                peers.c_str());
    std::fflush(stdout);
    all[name] = r;
  }
  if (all.contains("train256") && all.contains("train256_ckpt")) {
    const double t = all["train256_ckpt"]["median_s"].get<double>() / all["train256"]["median_s"].get<double>();
    const double m = all["train256_ckpt"]["peak_gb"].get<double>() / all["train256"]["peak_gb"].get<double>();
    std::printf("gradient checkpointing: time x%.2f, peak memory x%.2f\n", t, m);
  }
  for (auto& [k, v] : all.items())
    if (v.contains("profile_ms")) {
      std::printf("profile %-14s", k.c_str());
      for (auto& [g, ms] : v["profile_ms"].items()) std::printf("  %s %.0f ms", g.c_str(), ms.get<double>());
      std::printf("\n");
    }
  for (auto& [k, v] : all.items())
    if (v.contains("libtorch_conv")) {
      const double ours = v["median_s"].get<double>(), lt = v["libtorch_conv"]["median_s"].get<double>();
      std::printf("conv A/B %-13s ours %.3f s, libtorch's conv %.3f s (x%.2f), same process, interleaved; "
                  "first call %.3f s\n", k.c_str(), ours, lt, ours / lt, v["first_s"].get<double>());
    }
  print_fraction_of_peak(all);
  all["threads"] = torch::get_num_threads();
  all["torch"] = TORCH_VERSION;
  if (!o.json_out.empty()) {
    const std::string text = all.dump(2) + "\n";
    write_file_atomic(o.json_out, text.data(), text.size());
  }
}

}  // namespace

void add_bench(CLI::App& app) {
  auto o = std::make_shared<Opts>();
  std::string names;
  for (auto& [k, _] : kWork) names += (names.empty() ? "" : ", ") + k;
  auto* sub = app.add_subcommand("bench", "benchmarks at SD 1.5 shapes (random weights), with the peers when given");
  sub->add_option("--only", o->only, "comma-separated works: " + names);
  sub->add_option("--runs", o->runs, "timed runs per work (median; one warm-up before)")->capture_default_str();
  sub->add_option("--weights,-m,--model", o->weights, "SD 1.5 fp32 weights for txt2img (default: generated once by ldm init)");
  sub->add_option("--weights-fp16", o->weights16, "the same stored as fp16");
  sub->add_option("--vocab", o->vocab, "CLIP vocabulary for txt2img (default: beside the weights)");
  sub->add_option("--reference", o->reference, "checkout of Stability-AI/stablediffusion or CompVis/latent-diffusion");
  sub->add_option("--python", o->python, "python with torch for --reference")->capture_default_str();
  sub->add_option("--sdcpp", o->sdcpp, "stable-diffusion.cpp's CLI (sd or sd-cli): its UNet step, VAE decode and txt2img on the same weights");
  sub->add_option("--peers-venv", o->peers_venv,
                  "virtual environment with PyTorch 2.x and diffusers (bench/setup_peers.sh): the same works in diffusers, "
                  "and in OpenVINO where it is installed there");
  sub->add_option("--ipex-venv", o->ipex_venv,
                  "virtual environment with Intel's extension for PyTorch and diffusers (bench/setup_ipex.sh): the same "
                  "works through ipex.optimize");
  sub->add_option("--fashion-config", o->fashion_config, "config of the train_fashion work")->capture_default_str();
  sub->add_option("--fashion-ae-config", o->fashion_ae_config, "config of the train_fashion_ae work")->capture_default_str();
  sub->add_option("--json", o->json_out, "write all figures to this JSON file");
  sub->add_option("--ranks", o->ranks,
                  "training works (train_fashion*): N data-parallel ranks of cores/N threads at the config's batch, "
                  "as make run trains; the reference runs as N DDP ranks too")
      ->check(CLI::Range(1, 64))
      ->capture_default_str();
  sub->add_option("--child", o->child)->group("");  // internal: run one work in this process
  sub->callback([o] {
    if (!o->child.empty()) {
      if (o->ranks > 1 && !std::getenv("WORLD_SIZE")) {  // this child becomes the launcher of its ranks
        if (int rc = launch_local(o->ranks, free_local_port(), 30)) std::exit(rc);
        return;
      }
      auto r = run_child_work(*o);
      const char* rank = std::getenv("RANK");
      if (rank && std::string(rank) != "0") return;  // rank 0 reports
      r["ranks"] = o->ranks;
      for (const char* k : {"gflop", "gflops_per_s"})  // rank 0 counted its share of the batch
        if (r.contains(k)) r[k] = r[k].get<double>() * o->ranks;
      r["threads"] = torch::get_num_threads();
      std::printf("RESULT %s\n", r.dump().c_str());
      return;
    }
    run_bench(*o);
  });
}

}  // namespace ldm::cli

// The LoRA task: a frozen base LatentDiffusion (the `lora.base` checkpoint)
// with low-rank adapters on the UNet's attention (and feed-forward, or every
// Linear/Conv: LoCon) layers; only the adapters train (AdamW), so no gradient
// or optimizer state exists for the base. Checkpoints hold the adapters; each
// one also writes <run>/lora.safetensors in kohya's format (diffusers-style
// lora_unet_ names, .alpha, ss_ metadata), which A1111, stable-diffusion.cpp
// and `ldm --lora` read.
#include <algorithm>
#include <regex>

#include "ldm/io/atomic_file.h"
#include "ldm/io/ckpt.h"
#include "ldm/io/run_dir.h"
#include "ldm/io/safetensors.h"
#include "ldm/io/state_dict.h"
#include "ldm/models/lora.h"
#include "ldm/modules/encoders/clip_text.h"
#include "ldm/train/diffusion_task.h"
#include "ldm/util/config.h"

namespace ldm {

namespace {
struct LoraSettings {
  int64_t rank = 4;
  double alpha = 0;                   // 0: alpha = rank (scale 1)
  std::string targets = "attention";  // attention | attention+ff | all
  std::string base;
  bool text_encoder = false;          // adapters on CLIP's attention (and MLP) too
  double ema_decay = 0;               // > 0: an EMA of the adapters is what lora.safetensors holds
  static LoraSettings read(const YAML::Node& node) {
    Params p(node, "lora");
    LoraSettings s;
    s.rank = p.get<int64_t>("rank", 4);
    s.alpha = p.get<double>("alpha", 0.0);
    s.targets = p.get<std::string>("targets", "attention");
    s.base = p.req<std::string>("base");
    s.text_encoder = p.get<bool>("text_encoder", false);
    s.ema_decay = p.get<double>("ema_decay", 0.0);
    p.check_unused("lora");
    if (s.ema_decay < 0 || s.ema_decay >= 1)
      throw Error("lora.ema_decay: expected 0 (off) or a decay in (0, 1), e.g. 0.999; got " + std::to_string(s.ema_decay));
    if (s.rank < 1) throw Error("lora.rank: expected >= 1, got " + std::to_string(s.rank));
    if (s.targets != "attention" && s.targets != "attention+ff" && s.targets != "all")
      throw Error("lora.targets: expected attention, attention+ff or all, got \"" + s.targets + "\"");
    if (s.alpha == 0) s.alpha = static_cast<double>(s.rank);
    return s;
  }
};

// Whether the UNet module at `path` gets an adapter.
bool wanted(const std::string& path, bool conv, const std::string& targets) {
  static const std::regex attn(".*\\.(attn[12]\\.(to_q|to_k|to_v|to_out\\.0)|proj_in|proj_out)$"),
      ff(".*\\.ff\\.net\\.(0\\.proj|2)$");
  if (targets == "all") return true;
  if (std::regex_match(path, attn)) return true;
  return !conv && targets == "attention+ff" && std::regex_match(path, ff);
}

// kohya's name of a CLIP text-encoder layer that gets an adapter, or "" (HF
// CLIP paths: ...text_model.encoder.layers.N.self_attn.q_proj, ...mlp.fc1).
std::string text_encoder_name(const std::string& path, const std::string& targets) {
  static const std::regex attn(".*(text_model\\.encoder\\.layers\\.\\d+\\.self_attn\\.(q|k|v|out)_proj)$"),
      mlp(".*(text_model\\.encoder\\.layers\\.\\d+\\.mlp\\.fc[12])$");
  std::smatch m;
  if (!std::regex_match(path, m, attn) && (targets == "attention" || !std::regex_match(path, m, mlp))) return "";
  std::string name = "lora_te_" + m[1].str();
  std::replace(name.begin(), name.end(), '.', '_');
  return name;
}

class LoraTask : public DiffusionTask {
 public:
  LoraTask(const YAML::Node& model, const LoraSettings& ls, double lr, const Settings& s)
      : DiffusionTask(model, lr, s.vocab), ls_(ls) {
    load_base();
    for (auto& p : m_->parameters()) p.requires_grad_(false);
    attach();
    if (holder_->parameters().empty()) throw Error("lora.targets: no UNet layer matches \"" + ls_.targets + "\"");
    if (ls_.text_encoder) attach_text_encoder();
    opt_ = std::make_unique<FusedAdamW>(holder_->parameters(), torch::optim::AdamWOptions(lr));
    if (ls_.ema_decay > 0) make_ema();
  }
  torch::nn::Module& module() override { return *holder_; }
  std::vector<NamedOptimizer> optimizers() override { return {{"opt0", opt_.get()}}; }
  std::vector<torch::Tensor> params(int) override { return holder_->parameters(); }
  // LitEma's rule on the adapters (its own buffer names: ema.<adapter>.down/up)
  void after_step() override {
    if (!ema_) return;
    torch::NoGradGuard ng;
    ema_updates_.add_(1);
    const double d = lit_ema_decay(ls_.ema_decay, ema_updates_.item<double>());
    auto live = adapter_tensors();
    for (size_t i = 0; i < live.size(); ++i) lit_ema_step(ema_tensors_[i], live[i].detach(), d);
  }
  // previews with the EMA adapters, as the base's EMA is used for its samples
  void log_images(const std::string& path, const Batch& b, const Settings& s) override {
    EmaSwap swap(*this);
    DiffusionTask::log_images(path, b, s);
  }
  void prepare(const Dataset& ds, const TransformOptions& tf, const Settings& s) override {
    m_->to(dev);
    m_->train();
    if (m_->first_stage()) m_->first_stage()->eval();
    if (auto te = m_->cond_stage()) te->eval();
    size_ = tf.size;
    DiffusionTask::prepare(ds, tf, s);
  }
  void on_checkpoint(const std::string& out_dir, int64_t step) override {
    EmaSwap swap(*this);  // the file people use holds the EMA adapters when there are some
    export_kohya(out_dir + "/lora.safetensors", step);
  }

 private:
  void load_base() {
    auto w = io::load_weights(weights_file(ls_.base)).tensors;
    auto rep = load_state_dict(*m_, w, false, ls_.base);
    std::vector<std::string> missing;
    for (auto& k : rep.missing)
      if (k.rfind("model_ema.", 0) != 0 && k != "logvar") missing.push_back(k);
    if (!missing.empty() || !rep.mismatched.empty()) {
      LoadReport bad;
      bad.missing = missing;
      bad.mismatched = rep.mismatched;
      throw Error("lora.base " + ls_.base + ": does not fit the config's model: " + bad.summary());
    }
  }

  void attach() {
    holder_ = std::make_shared<nn::Holder>();
    const int64_t step = m_->unet()->options().num_res_blocks.front() + 1;
    for (const auto& item : m_->unet()->named_modules("", false)) {
      std::shared_ptr<nn::LoraAdapter> a;
      if (auto* l = item.value()->as<nn::Linear>()) {
        if (!wanted(item.key(), false, ls_.targets)) continue;
        a = std::make_shared<nn::LoraAdapter>(l->weight.size(1), l->weight.size(0), ls_.rank, ls_.alpha);
        l->lora = a;
      } else if (auto* c = item.value()->as<nn::Conv>()) {
        if (c->dims != 2 || !wanted(item.key(), true, ls_.targets)) continue;
        const int64_t k = c->weight.size(2);
        a = std::make_shared<nn::LoraAdapter>(c->weight.size(1), c->weight.size(0), ls_.rank, ls_.alpha,
                                              k == 1 ? 1 : k, c->stride, c->padding);
        c->lora = a;
      } else {
        continue;
      }
      const auto name = kohya_unet_name(item.key(), step);
      holder_->add(name, a);
      names_.emplace_back(name, a);
    }
  }

  // Adapters on CLIP ViT-L (SD 1.x); the conditioning then keeps its graph.
  void attach_text_encoder() {
    auto te = std::dynamic_pointer_cast<FrozenCLIPEmbedder>(m_->cond_stage());
    if (!te)
      throw Error("lora.text_encoder: needs SD 1.x's CLIP text encoder (FrozenCLIPEmbedder); OpenCLIP's fused q/k/v "
                  "projection is not trained here");
    size_t added = 0;
    for (const auto& item : te->named_modules("", false)) {
      auto* l = item.value()->as<nn::Linear>();
      const auto name = l ? text_encoder_name(item.key(), ls_.targets) : "";
      if (name.empty()) continue;
      auto a = std::make_shared<nn::LoraAdapter>(l->weight.size(1), l->weight.size(0), ls_.rank, ls_.alpha);
      l->lora = a;
      holder_->add(name, a);
      names_.emplace_back(name, a);
      ++added;
    }
    if (!added) throw Error("lora.text_encoder: no text-encoder layer matched");
    text_grad_ = true;
  }

  std::vector<torch::Tensor> adapter_tensors() const {
    std::vector<torch::Tensor> v;
    for (auto& [name, a] : names_) {
      v.push_back(a->down);
      v.push_back(a->up);
    }
    return v;
  }

  // EMA copies as buffers of the checkpointed module (exact resume), named ema.<adapter>.down/up
  void make_ema() {
    ema_ = std::make_shared<nn::Holder>();
    ema_updates_ = ema_->register_buffer("num_updates", torch::zeros({}, torch::kInt64));
    for (auto& [name, a] : names_) {
      ema_tensors_.push_back(ema_->register_buffer(name + "_down", a->down.detach().clone()));
      ema_tensors_.push_back(ema_->register_buffer(name + "_up", a->up.detach().clone()));
    }
    holder_->add("ema", ema_);
  }

  // Swaps the EMA values into the adapters for its lifetime (a no-op without EMA).
  struct EmaSwap {
    explicit EmaSwap(LoraTask& t) : t_(t) { swap(); }
    ~EmaSwap() { swap(); }
    void swap() {
      if (!t_.ema_) return;
      torch::NoGradGuard ng;
      auto live = t_.adapter_tensors();
      for (size_t i = 0; i < live.size(); ++i) {
        auto keep = live[i].detach().clone();
        live[i].copy_(t_.ema_tensors_[i]);
        t_.ema_tensors_[i].copy_(keep);
      }
    }
    LoraTask& t_;
  };

  // kohya's file: <name>.lora_down.weight / .lora_up.weight / .alpha, and ss_ metadata.
  void export_kohya(const std::string& path, int64_t step) {
    io::TensorMap out;
    for (auto& [name, a] : names_) {
      out[name + ".lora_down.weight"] = a->down.detach().to(torch::kFloat32).cpu().contiguous();
      out[name + ".lora_up.weight"] = a->up.detach().to(torch::kFloat32).cpu().contiguous();
      out[name + ".alpha"] = torch::tensor(static_cast<float>(a->alpha));
    }
    io::save_safetensors(path, out,
                         {{"ss_network_module", "networks.lora"},
                          {"ss_network_dim", std::to_string(ls_.rank)},
                          {"ss_network_alpha", std::to_string(ls_.alpha)},
                          {"ss_sd_model_name", std::filesystem::path(ls_.base).filename().string()},
                          {"ss_steps", std::to_string(step)},
                          {"ss_resolution", std::to_string(size_)},
                          {"ss_lora_targets", ls_.targets},
                          {"ss_text_encoder", ls_.text_encoder ? "trained" : "frozen"},
                          {"ss_ema_decay", std::to_string(ls_.ema_decay)},
                          {"ss_training_comment", "trained by ldm train (lora section)"}});
  }

  LoraSettings ls_;
  int64_t size_ = 0;  // training resolution (ss_resolution)
  std::shared_ptr<nn::Holder> holder_;
  std::vector<std::pair<std::string, std::shared_ptr<nn::LoraAdapter>>> names_;
  std::shared_ptr<nn::Holder> ema_;
  torch::Tensor ema_updates_;
  std::vector<torch::Tensor> ema_tensors_;  // down, up per adapter, as adapter_tensors()
};
}  // namespace

std::unique_ptr<Task> make_lora_task(const YAML::Node& model, const YAML::Node& lora, double lr, const Settings& s) {
  return std::make_unique<LoraTask>(model, LoraSettings::read(lora), lr, s);
}

}  // namespace ldm

// The LatentDiffusion/DDPM task: AdamW over the UNet (the reference's
// configure_optimizers), latents cached once when the first stage is frozen
// and the transforms deterministic, randomness drawn for the global batch.
// The LoRA task (lora_task.cpp) builds on it.
#pragma once
#include <iostream>
#include <optional>

#include "ldm/error.h"
#include "ldm/io/image.h"
#include "ldm/models/diffusion/ddpm.h"
#include "ldm/models/registry.h"
#include "ldm/modules/encoders/clip_text.h"
#include "ldm/modules/encoders/modules.h"
#include "ldm/modules/layers.h"
#include "ldm/pipeline/pipeline.h"
#include "ldm/pipeline/validate.h"
#include "ldm/train/optim.h"
#include "ldm/train/task.h"
#include "ldm/util/progress.h"

namespace ldm {

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
    if (auto kl = std::dynamic_pointer_cast<AutoencoderKL>(m_->first_stage())) {  // noise for the global batch, as above
      auto post = kl->encode(x);
      return (post.mean + post.std * randn_rows(post.mean.sizes().vec(), g).to(dev)) * m_->scale_factor.item<double>();
    }
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
      if (!m_->options().cond_stage_trainable && !text_grad_) {
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

  void check_settings(const Settings& s) override {
    if (s.image_every <= 0) return;
    try {
      pipeline::validate_sampling(s.sampler, s.sample_steps, "uniform", m_->schedule().alphas_cumprod.size(0));
    } catch (const Error& e) {
      throw Error(std::string("training.sampler/sample_steps (the preview images): ") + e.what());
    }
  }

  void log_images(const std::string& path, const Batch& b, const Settings& s) override {
    m_->eval();
    auto ema = m_->ema_scope();
    const auto& o = m_->options();
    int64_t classes = ce_ ? std::min<int64_t>(ce_->n_classes - (ce_->ucg_rate > 0 ? 1 : 0), 10) : 0;
    auto te = std::dynamic_pointer_cast<TextEncoder>(m_->cond_stage());
    const int64_t per = classes ? 8 : 0;
    const int64_t n = classes ? classes * per : te ? std::min<int64_t>(8, static_cast<int64_t>(b.caption.size())) : 16;
    pipeline::GenerateRequest r;
    r.batch = n;
    r.seed = 1234;  // same noise every time: grids compare
    r.width = r.height = o.image_size * (m_->first_stage() ? m_->first_stage()->downsample_factor() : 1);
    r.sampler = s.sampler;
    r.steps = s.sample_steps;
    r.cfg_scale = 1.0;
    if (ce_) {
      for (int64_t c = 0; c < classes; ++c) r.class_labels.insert(r.class_labels.end(), per, c);  // rows are classes
      if (ce_->ucg_rate > 0) r.cfg_scale = s.sample_cfg;
    }
    if (te) {  // the batch's captions
      r.prompts.assign(b.caption.begin(), b.caption.begin() + n);
      r.negative_prompt = o.ucg_value;
      if (o.ucg_probability > 0) r.cfg_scale = s.sample_cfg;
    }
    auto res = pipeline::Pipeline::from_model(m_)->generate(r);
    auto x = res.images.defined() ? res.images : io::to_unit_range(res.latents);
  ema.reset();
    m_->train();
    if (m_->first_stage()) m_->first_stage()->eval();
    io::save_png(path, io::make_grid(x, classes ? per : 4),
                 {{"Description", classes ? "samples with EMA weights, one row per class" : "samples with EMA weights"}});
  }

 protected:
  std::shared_ptr<LatentDiffusion> m_;
  std::shared_ptr<ClassEmbedder> ce_;
  bool text_grad_ = false;  // the text encoder's output keeps its graph (its LoRA adapters train)
  std::unique_ptr<torch::optim::AdamW> opt_;
  torch::Tensor moments_;
};

}  // namespace ldm

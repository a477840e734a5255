// models/diffusion/ddpm: DDPM and LatentDiffusion. Registered names follow
// the reference (model.diffusion_model, first_stage_model, cond_stage_model,
// schedule buffers) so CompVis/Stable Diffusion checkpoints load as is.
#pragma once
#include <torch/nn/module.h>
#include <torch/types.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "ldm/models/autoencoder.h"
#include "ldm/models/tiling.h"
#include "ldm/models/diffusion/schedule.h"
#include "ldm/modules/ema.h"
#include "ldm/modules/diffusionmodules/openaimodel.h"

namespace ldm {
class Params;

struct LatentDiffusionOptions {
  ScheduleOptions schedule;
  std::string loss_type = "l2";  // l1 | l2
  double l_simple_weight = 1.0, original_elbo_weight = 0.0, logvar_init = 0.0;
  bool learn_logvar = false, clip_denoised = true;
  // ours (0 = off, the reference): Min-SNR-gamma loss weighting (Hang et al. 2023,
  // arXiv:2303.09556), as diffusers' training scripts' --snr_gamma.
  double snr_gamma = 0.0;
  std::string conditioning_key;  // "", concat, crossattn, hybrid, adm
  double scale_factor = 1.0;
  bool scale_by_std = false, cond_stage_trainable = false, use_ema = false;
  bool cond_is_first_stage = false;  // cond_stage_config: __is_first_stage__
  std::string first_stage_key = "image", cond_stage_key = "image";
  int64_t image_size = 32, channels = 4;
  double ucg_probability = 0.0;  // text conditioning dropout for guidance training (ucg_training)
  std::string ucg_value;         // what a dropped caption becomes ("")
};

// Conditioning passed to the UNet, by conditioning_key.
struct Cond {
  torch::Tensor crossattn;  // context [N, L, D]
  torch::Tensor concat;     // channels concatenated to x
  torch::Tensor y;          // class labels / adm vector
};

class LatentDiffusion : public torch::nn::Module {
 public:
  // first_stage/cond_stage may be null (pixel-space DDPM / unconditional).
  LatentDiffusion(LatentDiffusionOptions o, std::shared_ptr<UNetModel> unet, std::shared_ptr<FirstStage> first_stage,
                  std::shared_ptr<torch::nn::Module> cond_stage);
  static std::shared_ptr<LatentDiffusion> from_params(const Params& p, bool is_ddpm);

  // The UNet call with conditioning routed by conditioning_key.
  torch::Tensor apply_model(const torch::Tensor& x, const torch::Tensor& t, const Cond& c);
  torch::Tensor q_sample(const torch::Tensor& x0, const torch::Tensor& t, const torch::Tensor& noise) const;
  torch::Tensor get_v(const torch::Tensor& x0, const torch::Tensor& noise, const torch::Tensor& t) const;
  torch::Tensor predict_start_from_noise(const torch::Tensor& xt, const torch::Tensor& t, const torch::Tensor& eps) const;
  torch::Tensor predict_start_from_v(const torch::Tensor& xt, const torch::Tensor& t, const torch::Tensor& v) const;
  torch::Tensor predict_eps_from_v(const torch::Tensor& xt, const torch::Tensor& t, const torch::Tensor& v) const;

  struct Losses {
    torch::Tensor loss, loss_simple, loss_vlb, x_noisy, model_output, target;
  };
  // Per-sample loss weight of Min-SNR-gamma at timesteps t (ones when snr_gamma is 0).
  torch::Tensor snr_weight(const torch::Tensor& t) const;
  Losses p_losses(const torch::Tensor& x_start, const Cond& c, const torch::Tensor& t, const torch::Tensor& noise);
  // One training objective evaluation: t ~ U{0..T-1} and noise from `gen`
  // (the reference's shared_step on already-encoded latents).
  torch::Tensor training_loss(const torch::Tensor& z, const Cond& c, torch::Generator& gen);

  // Conditioning: the cond stage applied to labels (ClassEmbedder) or, with
  // no cond stage, the tensor itself; routed to the UNet by conditioning_key.
  torch::Tensor get_learned_conditioning(const torch::Tensor& c);
  torch::Tensor unconditional_conditioning(int64_t n);  // ClassEmbedder's null class
  // Text cond stages (CLIP): prompts -> context; needs the tokenizer attached.
  // Prompts of any length (75-token windows) and (word:1.2) weighting.
  torch::Tensor text_conditioning(const std::vector<std::string>& prompts, size_t min_windows = 1);
  // hybrid: c is the cross-attention side; the caller adds the concat side.
  Cond make_cond(const torch::Tensor& c) const;

  // EMA of model.* (when use_ema): the reference's model_ema buffers.
  std::shared_ptr<LitEma> model_ema;
  torch::nn::Module& model_wrapper() { return *model_; }
  // Swaps EMA weights in for the scope (no-op without EMA).
  std::unique_ptr<EmaScope> ema_scope();

  // Pixels in [-1,1] -> scaled latents, and back; tiled when vae_tiling.tile
  // > 0 (tile and overlap in latent units).
  TileOptions vae_tiling;
  torch::Tensor encode_first_stage(const torch::Tensor& x, std::optional<torch::Generator> gen = std::nullopt);
  torch::Tensor decode_first_stage(const torch::Tensor& z);

  const LatentDiffusionOptions& options() const { return o_; }
  DiffusionSchedule& schedule() { return sched_; }
  std::shared_ptr<UNetModel> unet() { return unet_; }
  std::shared_ptr<FirstStage> first_stage() { return first_stage_; }
  std::shared_ptr<torch::nn::Module> cond_stage() { return cond_stage_; }
  torch::Tensor scale_factor;  // buffer
  torch::Tensor logvar;        // [T]; a parameter when learn_logvar

 private:
  LatentDiffusionOptions o_;
  DiffusionSchedule sched_;
  std::shared_ptr<UNetModel> unet_;
  std::shared_ptr<FirstStage> first_stage_;
  std::shared_ptr<torch::nn::Module> cond_stage_;
  std::shared_ptr<nn::Holder> model_;
};

}  // namespace ldm

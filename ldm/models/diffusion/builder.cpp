#include "ldm/models/diffusion/builder.h"

#include <torch/torch.h>

#include "ldm/error.h"
#include "ldm/modules/encoders/modules.h"

namespace ldm {

std::shared_ptr<LatentDiffusion> make_latent_diffusion(const LatentDiffusionSpec& s) {
  UNetOptions u;
  u.image_size = s.latent_size;
  u.in_channels = u.out_channels = s.latent_dim;
  u.model_channels = s.model_channels;
  u.channel_mult = s.channel_mult;
  u.num_res_blocks = {s.num_res_blocks};
  u.num_heads = s.num_heads;
  u.legacy = false;
  u.attention_resolutions.clear();
  for (int64_t r : s.attention_resolutions) {
    if (r <= 0 || s.latent_size % r) throw Error("attention_resolutions: " + std::to_string(r) + " does not divide latent_size");
    u.attention_resolutions.push_back(static_cast<int>(s.latent_size / r));
  }
  std::shared_ptr<torch::nn::Module> cond;
  LatentDiffusionOptions o;
  o.schedule = s.schedule;
  o.image_size = s.latent_size;
  o.channels = s.latent_dim;
  o.scale_factor = s.scale_factor;
  o.use_ema = s.use_ema;
  if (s.num_classes > 0) {
    u.use_spatial_transformer = true;
    u.context_dim = {s.context_dim};
    cond = std::make_shared<ClassEmbedder>(s.context_dim, s.num_classes + 1, "class_label", s.class_dropout);
    o.conditioning_key = "crossattn";
    o.cond_stage_key = "class_label";
    o.cond_stage_trainable = true;
  }
  auto fs = s.first_stage ? s.first_stage : std::make_shared<IdentityFirstStage>();
  return std::make_shared<LatentDiffusion>(o, std::make_shared<UNetModel>(u), fs, cond);
}

}  // namespace ldm

// LatentDiffusion built in code, without YAML: the C++ form of
// LatentDiffusion(latent_dim=4, attention_resolutions=[8, 16, 32], num_heads=8).
// Defaults describe a small class-conditional latent model; every field maps
// onto the reference's config keys (see the comments).
#pragma once
#include <memory>
#include <vector>

#include "ldm/models/diffusion/ddpm.h"

namespace ldm {

struct LatentDiffusionSpec {
  int64_t latent_dim = 4;                       // channels of the latents (unet in/out_channels)
  int64_t latent_size = 32;                     // image_size of the latents
  // latent resolutions with attention (as pixel sizes, e.g. {8, 16, 32} of a
  // 32x32 latent), turned into the reference's downsampling factors
  std::vector<int64_t> attention_resolutions = {8, 16, 32};
  int64_t num_heads = 8;
  int64_t model_channels = 64;
  std::vector<int> channel_mult = {1, 2, 4};
  int num_res_blocks = 2;
  int64_t num_classes = 0;                      // > 0: ClassEmbedder (+1 null class for guidance)
  double class_dropout = 0.1;                   // label dropout for classifier-free guidance
  int64_t context_dim = 128;                    // width of the class embedding / cross-attention
  std::shared_ptr<FirstStage> first_stage;      // null: the identity (diffusion on the input itself)
  double scale_factor = 1.0;
  ScheduleOptions schedule;                     // linear 1e-4..2e-2, 1000 steps, eps
  bool use_ema = true;
};

std::shared_ptr<LatentDiffusion> make_latent_diffusion(const LatentDiffusionSpec& s);

}  // namespace ldm

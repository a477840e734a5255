// Request -> what the UNet is conditioned on: both sides of guidance, and for
// img2img/inpainting the start latents, the blend mask or (9-channel
// inpainting UNets) the concat channels, as the reference's scripts build them.
#pragma once
#include <torch/types.h>

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "ldm/models/diffusion/ddpm.h"
#include "ldm/pipeline/request.h"

namespace ldm::pipeline {

struct Conditioning {
  Cond cond, uncond;
  std::string prompt_text;  // the first lines of the parameters text
};

// n images; `guided`: build the unconditional side too.
Conditioning condition(LatentDiffusion& m, const GenerateRequest& r, int64_t n, bool guided);

struct ImageStart {
  torch::Tensor x0;    // img2img start latents (undefined: pure noise)
  torch::Tensor keep;  // latent blending: 1 where x0 is kept
};
// Pixels [N, C, H, W] in [-1, 1] -> the UNet's latents; empty: the first stage
// (posterior samples drawn from the generator).
using Encode = std::function<torch::Tensor(const torch::Tensor&, torch::Generator)>;
// Encodes the init image (and mask) for `noise`'s latent shape, row i's
// posterior sample drawn from gens[i]; for hybrid models fills c.concat / u.concat.
ImageStart prepare_image(LatentDiffusion& m, const GenerateRequest& r, const torch::Tensor& noise, Conditioning& c,
                         const std::vector<torch::Generator>& gens, Encode encode = {});

}  // namespace ldm::pipeline

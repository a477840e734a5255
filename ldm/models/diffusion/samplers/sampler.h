// Sampler interface: a guided denoiser over integer timesteps and the
// samplers that use it (one file each).
#pragma once
#include <torch/types.h>

#include <functional>
#include <optional>
#include <string>

#include "ldm/models/diffusion/ddpm.h"

namespace ldm {

// eps prediction with classifier-free guidance: the UNet runs once on the
// batch [uncond, cond] and eps = eps_u + scale (eps_c - eps_u). For
// v-models guidance is applied to v, then converted to eps.
class GuidedDenoiser {
 public:
  GuidedDenoiser(LatentDiffusion& model, Cond cond, Cond uncond = {}, double scale = 1.0);
  torch::Tensor eps(const torch::Tensor& x, int64_t t);
  LatentDiffusion& model() { return m_; }
  int64_t calls = 0;

 private:
  LatentDiffusion& m_;
  Cond cond_, uncond_, both_;
  double scale_;
  bool guided_;
};

struct SampleOptions {
  int64_t steps = 50;
  double eta = 0.0;
  std::string discretize = "uniform";
  std::optional<torch::Generator> generator;
  // called after each step: (step index from 0, total, x, pred_x0)
  std::function<void(int64_t, int64_t, const torch::Tensor&, const torch::Tensor&)> callback;
};

torch::Tensor ddim_sample(GuidedDenoiser& d, const torch::Tensor& x_T, const SampleOptions& o);
torch::Tensor plms_sample(GuidedDenoiser& d, const torch::Tensor& x_T, const SampleOptions& o);

}  // namespace ldm

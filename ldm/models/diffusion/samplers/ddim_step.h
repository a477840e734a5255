// One DDIM update, shared by DDIM and PLMS. Coefficients become float32
// scalars as in the reference (torch.full of a Python float).
#pragma once
#include <torch/torch.h>

#include <optional>
#include <utility>

#include "ldm/models/diffusion/samplers/common.h"
#include "ldm/models/diffusion/schedule.h"

namespace ldm {

inline std::pair<torch::Tensor, torch::Tensor> ddim_step(const torch::Tensor& x, const torch::Tensor& e,
                                                         const DdimParams& p, int64_t i, const SampleOptions& o) {
  auto f32 = [&](const torch::Tensor& v) {
    return torch::full({1}, v[i].item<double>(), x.options().dtype(torch::kFloat32)).to(x.scalar_type());
  };
  auto a_t = f32(p.alphas), a_prev = f32(p.alphas_prev), sigma = f32(p.sigmas), s1m = f32(p.sqrt_one_minus_alphas);
  auto pred_x0 = (x - s1m * e) / a_t.sqrt();
  auto dir_xt = (1.0 - a_prev - sigma.pow(2)).sqrt() * e;
  auto x_prev = a_prev.sqrt() * pred_x0 + dir_xt;
  if (p.sigmas[i].item<double>() != 0.0) {
    x_prev = x_prev + sigma * samplers::randn(x, o);
  }
  return {x_prev, pred_x0};
}

}  // namespace ldm

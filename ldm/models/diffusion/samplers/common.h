// Pieces every sampler shares: noise from the caller's generator, the
// img2img start and latent-mask blending in VP (x = sqrt(a) x0 + sqrt(1-a) n)
// and VE (x = x0 + sigma n) form.
#pragma once
#include <torch/torch.h>

#include <cmath>

#include "ldm/models/diffusion/samplers/sampler.h"

namespace ldm::samplers {

inline torch::Tensor randn(const torch::Tensor& like, const SampleOptions& o) {
  if (!o.generators.empty() && static_cast<int64_t>(o.generators.size()) == like.size(0)) {
    auto row = like.sizes().vec();
    row[0] = 1;
    std::vector<torch::Tensor> rows;
    for (auto g : o.generators) rows.push_back(torch::randn(row, g, like.options()));
    return torch::cat(rows);
  }
  return o.generator ? torch::randn(like.sizes(), *o.generator, like.options()) : torch::randn_like(like);
}

// Number of leading steps img2img skips: run the last int(steps * strength).
int64_t skipped_steps(int64_t steps, const SampleOptions& o);

// Starting point at cumulative alpha `a` (VP) or noise level `sigma` (VE).
inline torch::Tensor start_vp(const torch::Tensor& noise, double a, const SampleOptions& o) {
  if (!o.x0.defined() || o.strength >= 1.0) return noise;
  return std::sqrt(a) * o.x0 + std::sqrt(1 - a) * noise;
}
inline torch::Tensor start_ve(const torch::Tensor& noise, double sigma, const SampleOptions& o) {
  if (!o.x0.defined() || o.strength >= 1.0) return noise * sigma;
  return o.x0 + noise * sigma;
}

// Known region (mask == 1) replaced by x0 at the current noise level.
inline torch::Tensor blend_vp(const torch::Tensor& x, double a, const SampleOptions& o) {
  if (!o.mask.defined()) return x;
  auto known = std::sqrt(a) * o.x0 + std::sqrt(1 - a) * randn(x, o);
  return o.mask * known + (1 - o.mask) * x;
}
inline torch::Tensor blend_ve(const torch::Tensor& x, double sigma, const SampleOptions& o) {
  if (!o.mask.defined()) return x;
  auto known = sigma > 0 ? o.x0 + sigma * randn(x, o) : o.x0;
  return o.mask * known + (1 - o.mask) * x;
}
inline torch::Tensor finish(const torch::Tensor& x, const SampleOptions& o) {
  return o.mask.defined() ? o.mask * o.x0 + (1 - o.mask) * x : x;
}

// Integer timesteps high to low: `steps` of them, spaced uniformly (or
// quadratically) over [0, T-1] and ending at 0.
std::vector<int64_t> timesteps_descending(int64_t T, int64_t steps, const std::string& discretize);

}  // namespace ldm::samplers

// DDPM ancestral sampling (Ho et al. 2020, eq. 6-7): draw x_s from the
// posterior q(x_s | x_t, x0_pred). With steps == T this is the reference's
// p_sample_loop; fewer steps use the respaced chain (betas 1 - a_t / a_s,
// Nichol & Dhariwal 2021) over evenly spaced timesteps.
#include <torch/torch.h>

#include <cmath>

#include "ldm/models/diffusion/samplers/common.h"

namespace ldm {

torch::Tensor ddpm_sample(Denoiser& d, const torch::Tensor& noise, const SampleOptions& o) {
  auto acp = d.alphas_cumprod().to(torch::kFloat64).cpu();
  auto ts = samplers::timesteps_descending(acp.size(0), o.steps, o.discretize);
  const int64_t S = static_cast<int64_t>(ts.size());
  const int64_t skip = samplers::skipped_steps(S, o);
  auto abar = [&](int64_t i) { return i < S ? acp[ts[i]].item<double>() : 1.0; };
  auto x = samplers::start_vp(noise, abar(skip), o);
  for (int64_t i = skip; i < S; ++i) {
    const double a_t = abar(i), a_s = abar(i + 1);
    x = samplers::blend_vp(x, a_t, o);
    auto e = d.eps(x, ts[i]);
    auto x0 = (x - std::sqrt(1 - a_t) * e) / std::sqrt(a_t);
    if (o.clip_denoised) x0 = x0.clamp(-1, 1);
    const double beta = 1 - a_t / a_s;
    const double c1 = std::sqrt(a_s) * beta / (1 - a_t), c2 = std::sqrt(1 - beta) * (1 - a_s) / (1 - a_t);
    x = c1 * x0 + c2 * x;
    if (i + 1 < S) {
      const double var = beta * (1 - a_s) / (1 - a_t);
      x = x + std::exp(0.5 * std::log(std::max(var, 1e-20))) * samplers::randn(x, o);
    }
    if (o.callback) o.callback(i - skip, S - skip, x, x0);
  }
  return samplers::finish(x, o);
}

}  // namespace ldm

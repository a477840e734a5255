// DPM-Solver++ (Lu et al. 2022, "DPM-Solver++", Alg. 2): multistep,
// second order, data prediction, in the variance-preserving parameterisation
// alpha_t = sqrt(abar), sigma_t = sqrt(1 - abar), lambda = log(alpha/sigma).
// `steps` model evaluations over steps + 1 timesteps from T-1 down to 0; the
// last step is first order when steps < 15 (the reference's lower_order_final).
#include <torch/torch.h>

#include <cmath>

#include "ldm/error.h"
#include "ldm/models/diffusion/samplers/common.h"

namespace ldm {

torch::Tensor dpm_solver_pp_sample(Denoiser& d, const torch::Tensor& noise, const SampleOptions& o) {
  auto acp = d.alphas_cumprod().to(torch::kFloat64).cpu();
  const int64_t T = acp.size(0);
  if (o.steps + 1 > T) throw Error("dpm_solver++: steps must be < " + std::to_string(T));
  auto ts = samplers::timesteps_descending(T, o.steps + 1, o.discretize);
  const int64_t S = o.steps;
  auto abar = [&](int64_t i) { return acp[ts[i]].item<double>(); };
  auto alpha = [&](int64_t i) { return std::sqrt(abar(i)); };
  auto sigma = [&](int64_t i) { return std::sqrt(1 - abar(i)); };
  auto lambda = [&](int64_t i) { return std::log(alpha(i)) - std::log(sigma(i)); };
  const int64_t skip = samplers::skipped_steps(S, o);
  auto x = samplers::start_vp(noise, abar(skip), o);
  torch::Tensor x0_prev;
  double h_prev = 0;
  for (int64_t i = skip; i < S; ++i) {
    x = samplers::blend_vp(x, abar(i), o);
    auto e = d.eps(x, ts[i]);
    auto x0 = (x - sigma(i) * e) / alpha(i);
    const double h = lambda(i + 1) - lambda(i);
    const bool first_order = !x0_prev.defined() || (i == S - 1 && S < 15);
    torch::Tensor D = x0;
    if (!first_order) {
      const double r = h_prev / h;
      D = (1 + 0.5 / r) * x0 - (0.5 / r) * x0_prev;
    }
    x = (sigma(i + 1) / sigma(i)) * x - alpha(i + 1) * std::expm1(-h) * D;
    x0_prev = x0;
    h_prev = h;
    if (o.callback) o.callback(i - skip, S - skip, x, x0);
  }
  return samplers::finish(x, o);
}

}  // namespace ldm

// DDIM (Song et al. 2021, eq. 12) as the reference DDIMSampler runs it.
#include <torch/torch.h>

#include "ldm/models/diffusion/samplers/sampler.h"
#include "ldm/models/diffusion/samplers/ddim_step.h"

namespace ldm {

torch::Tensor ddim_sample(GuidedDenoiser& d, const torch::Tensor& x_T, const SampleOptions& o) {
  auto p = make_ddim_params(d.model().schedule().alphas_cumprod, o.steps, o.eta, o.discretize);
  auto x = x_T;
  const int64_t S = static_cast<int64_t>(p.timesteps.size());
  for (int64_t k = 0; k < S; ++k) {
    int64_t i = S - 1 - k;
    auto e = d.eps(x, p.timesteps[i]);
    auto [x_prev, pred_x0] = ddim_step(x, e, p, i, o.generator);
    x = x_prev;
    if (o.callback) o.callback(k, S, x, pred_x0);
  }
  return x;
}

}  // namespace ldm

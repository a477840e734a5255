// DDIM (Song et al. 2021, eq. 12) as the reference DDIMSampler runs it.
#include <torch/torch.h>

#include "ldm/models/diffusion/samplers/common.h"
#include "ldm/models/diffusion/samplers/ddim_step.h"

namespace ldm {

torch::Tensor ddim_sample(Denoiser& d, const torch::Tensor& noise, const SampleOptions& o) {
  auto p = make_ddim_params(d.alphas_cumprod(), o.steps, o.eta, o.discretize);
  const int64_t S = static_cast<int64_t>(p.timesteps.size());
  const int64_t skip = samplers::skipped_steps(S, o);
  auto x = samplers::start_vp(noise, p.alphas[S - 1 - skip].item<double>(), o);
  for (int64_t k = skip; k < S; ++k) {
    int64_t i = S - 1 - k;
    x = samplers::blend_vp(x, p.alphas[i].item<double>(), o);
    auto e = d.eps(x, p.timesteps[i]);
    auto [x_prev, pred_x0] = ddim_step(x, e, p, i, o);
    x = x_prev;
    if (o.callback) o.callback(k - skip, S - skip, x, pred_x0);
  }
  return samplers::finish(x, o);
}

}  // namespace ldm

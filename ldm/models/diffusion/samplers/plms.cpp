// PLMS (Liu et al. 2022, pseudo linear multi-step) as the reference
// PLMSSampler: a 2-evaluation first step, then Adams-Bashforth on eps.
#include <torch/torch.h>

#include <deque>

#include "ldm/error.h"
#include "ldm/models/diffusion/samplers/common.h"
#include "ldm/models/diffusion/samplers/ddim_step.h"

namespace ldm {

torch::Tensor plms_sample(Denoiser& d, const torch::Tensor& noise, const SampleOptions& o) {
  if (o.eta != 0.0) throw Error("plms: eta must be 0");
  auto p = make_ddim_params(d.alphas_cumprod(), o.steps, 0.0, o.discretize);
  const int64_t S = static_cast<int64_t>(p.timesteps.size());
  const int64_t skip = samplers::skipped_steps(S, o);
  std::deque<torch::Tensor> old;  // previous steps' first evaluations, newest last
  auto x = samplers::start_vp(noise, p.alphas[S - 1 - skip].item<double>(), o);
  for (int64_t k = skip; k < S; ++k) {
    int64_t i = S - 1 - k;
    int64_t t_next = p.timesteps[std::max<int64_t>(i - 1, 0)];
    x = samplers::blend_vp(x, p.alphas[i].item<double>(), o);
    auto e = d.eps(x, p.timesteps[i]);
    torch::Tensor e_prime;
    const size_t n = old.size();
    if (n == 0) {
      auto x1 = ddim_step(x, e, p, i, o).first;
      e_prime = (e + d.eps(x1, t_next)) / 2;
    } else if (n == 1) {
      e_prime = (3 * e - old[n - 1]) / 2;
    } else if (n == 2) {
      e_prime = (23 * e - 16 * old[n - 1] + 5 * old[n - 2]) / 12;
    } else {
      e_prime = (55 * e - 59 * old[n - 1] + 37 * old[n - 2] - 9 * old[n - 3]) / 24;
    }
    auto [x_prev, pred_x0] = ddim_step(x, e_prime, p, i, o);
    old.push_back(e);
    if (old.size() > 3) old.pop_front();
    x = x_prev;
    if (o.callback) o.callback(k - skip, S - skip, x, pred_x0);
  }
  return samplers::finish(x, o);
}

}  // namespace ldm

#include "ldm/models/diffusion/schedule.h"

#include <torch/torch.h>

#include "ldm/error.h"
#include "ldm/modules/diffusionmodules/util.h"

namespace ldm {

DiffusionSchedule DiffusionSchedule::make(const ScheduleOptions& o, torch::ScalarType dt) {
  auto betas = o.given_betas.defined() ? o.given_betas.to(torch::kFloat64)
                                       : make_beta_schedule(o.beta_schedule, o.timesteps, o.linear_start,
                                                            o.linear_end, o.cosine_s);
  const int64_t T = betas.size(0);
  auto alphas = 1.0 - betas;
  auto acp = torch::cumprod(alphas, 0);
  auto acp_prev = torch::cat({torch::ones({1}, torch::kFloat64), acp.slice(0, 0, T - 1)});
  DiffusionSchedule s;
  s.num_timesteps = T;
  auto cast = [dt](const torch::Tensor& t) { return t.to(dt); };
  s.betas = cast(betas);
  s.alphas_cumprod = cast(acp);
  s.alphas_cumprod_prev = cast(acp_prev);
  s.sqrt_alphas_cumprod = cast(acp.sqrt());
  s.sqrt_one_minus_alphas_cumprod = cast((1.0 - acp).sqrt());
  s.log_one_minus_alphas_cumprod = cast((1.0 - acp).log());
  s.sqrt_recip_alphas_cumprod = cast((1.0 / acp).sqrt());
  s.sqrt_recipm1_alphas_cumprod = cast((1.0 / acp - 1).sqrt());
  auto pv = (1 - o.v_posterior) * betas * (1.0 - acp_prev) / (1.0 - acp) + o.v_posterior * betas;
  s.posterior_variance = cast(pv);
  s.posterior_log_variance_clipped = cast(pv.clamp_min(1e-20).log());
  s.posterior_mean_coef1 = cast(betas * acp_prev.sqrt() / (1.0 - acp));
  s.posterior_mean_coef2 = cast((1.0 - acp_prev) * alphas.sqrt() / (1.0 - acp));
  // lvlb_weights from the already-cast buffers (reference behaviour).
  if (o.parameterization == "eps")
    s.lvlb_weights = s.betas.pow(2) / (2 * s.posterior_variance * cast(alphas) * (1 - s.alphas_cumprod));
  else if (o.parameterization == "x0")
    s.lvlb_weights = 0.5 * cast(acp).sqrt() / (2.0 * 1 - cast(acp));
  else if (o.parameterization == "v")
    s.lvlb_weights = torch::ones({T}, torch::TensorOptions().dtype(dt));
  else
    throw Error("parameterization: expected eps, x0 or v, got \"" + o.parameterization + "\"");
  s.lvlb_weights[0] = s.lvlb_weights[1].clone();
  return s;
}

std::vector<std::pair<std::string, torch::Tensor*>> DiffusionSchedule::buffers() {
  return {{"betas", &betas},
          {"alphas_cumprod", &alphas_cumprod},
          {"alphas_cumprod_prev", &alphas_cumprod_prev},
          {"sqrt_alphas_cumprod", &sqrt_alphas_cumprod},
          {"sqrt_one_minus_alphas_cumprod", &sqrt_one_minus_alphas_cumprod},
          {"log_one_minus_alphas_cumprod", &log_one_minus_alphas_cumprod},
          {"sqrt_recip_alphas_cumprod", &sqrt_recip_alphas_cumprod},
          {"sqrt_recipm1_alphas_cumprod", &sqrt_recipm1_alphas_cumprod},
          {"posterior_variance", &posterior_variance},
          {"posterior_log_variance_clipped", &posterior_log_variance_clipped},
          {"posterior_mean_coef1", &posterior_mean_coef1},
          {"posterior_mean_coef2", &posterior_mean_coef2}};
}

DdimParams make_ddim_params(const torch::Tensor& acp32, int64_t steps, double eta, const std::string& disc) {
  DdimParams p;
  const int64_t T = acp32.size(0);
  p.timesteps = make_ddim_timesteps(disc, steps, T);
  for (auto t : p.timesteps)  // the reference's spacing (+1 shift) can step past the end; it would crash
    if (t < 0 || t >= T)
      throw Error("ddim: " + std::to_string(steps) + " steps over " + std::to_string(T) + " timesteps give timestep " +
                  std::to_string(t) + " (out of range); use a step count whose spacing fits, e.g. one dividing " +
                  std::to_string(T));
  auto acp = acp32.to(torch::kFloat32).cpu();
  auto idx = torch::tensor(p.timesteps, torch::kInt64);
  p.alphas = acp.index_select(0, idx);
  // alphas_prev[0] = acp[0] (not 1.0), as the reference
  auto prev = torch::cat({acp.slice(0, 0, 1), acp.index_select(0, idx.slice(0, 0, idx.size(0) - 1))}).to(torch::kFloat64);
  p.alphas_prev = prev;
  auto a = p.alphas.to(torch::kFloat64);
  // numpy / float32-tensor dispatches to Tensor.__rtruediv__ = reciprocal() * other,
  // so 1/(1 - alphas) is a float32 op in the reference; the rest is float64.
  auto recip = (1.0 / (1.0 - p.alphas)).to(torch::kFloat64);
  p.sigmas = eta * (recip * (1 - prev) * (1 - a / prev)).sqrt();
  p.sqrt_one_minus_alphas = (1.0 - p.alphas).sqrt();
  return p;
}

}  // namespace ldm

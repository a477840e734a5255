// Diffusion schedule buffers as DDPM.register_schedule makes them, and the
// DDIM sampling coefficients (math only, no modules).
#pragma once
#include <torch/types.h>

#include <string>
#include <vector>

namespace ldm {

struct ScheduleOptions {
  std::string beta_schedule = "linear";
  int64_t timesteps = 1000;
  double linear_start = 1e-4, linear_end = 2e-2, cosine_s = 8e-3, v_posterior = 0.0;
  std::string parameterization = "eps";  // eps | x0 | v
  torch::Tensor given_betas;             // optional, overrides beta_schedule
};

struct DiffusionSchedule {
  // float32 by default (as a checkpoint holds them); float64 when asked.
  torch::Tensor betas, alphas_cumprod, alphas_cumprod_prev, sqrt_alphas_cumprod, sqrt_one_minus_alphas_cumprod,
      log_one_minus_alphas_cumprod, sqrt_recip_alphas_cumprod, sqrt_recipm1_alphas_cumprod, posterior_variance,
      posterior_log_variance_clipped, posterior_mean_coef1, posterior_mean_coef2, lvlb_weights;
  int64_t num_timesteps = 0;
  // The reference computes in float64 numpy and casts to float32, except
  // lvlb_weights, computed in float32 from the cast buffers.
  static DiffusionSchedule make(const ScheduleOptions& o, torch::ScalarType dtype = torch::kFloat32);
  // name -> tensor, with the reference buffer names (lvlb_weights excluded: not persistent)
  std::vector<std::pair<std::string, torch::Tensor*>> buffers();
};

struct DdimParams {
  std::vector<int64_t> timesteps;
  torch::Tensor alphas, alphas_prev, sigmas, sqrt_one_minus_alphas;  // f32, f64, f64, f32
};
// make_ddim_timesteps + make_ddim_sampling_parameters from float32 alphas_cumprod.
DdimParams make_ddim_params(const torch::Tensor& alphas_cumprod, int64_t steps, double eta,
                            const std::string& discretize = "uniform");

}  // namespace ldm

// Sigma space of a discrete VP model (k-diffusion's DiscreteSchedule):
// sigma_t = sqrt((1 - abar_t) / abar_t), x_ve = x_vp / sqrt(abar).
#pragma once
#include <torch/types.h>

#include <string>
#include <vector>

namespace ldm {
class Denoiser;

class SigmaSchedule {
 public:
  explicit SigmaSchedule(const torch::Tensor& alphas_cumprod);
  // `steps` sigmas from sigma_max down, then 0. discrete: evenly spaced in t,
  // log-sigma interpolated; karras: Karras et al. 2022 eq. 5 with rho = 7.
  std::vector<double> sigmas(int64_t steps, const std::string& kind) const;
  double sigma_to_t(double sigma) const;  // inverse of the log-linear interpolation
  double t_to_sigma(double t) const;
  double sigma_min() const { return std::exp(log_sigmas_.front()); }
  double sigma_max() const { return std::exp(log_sigmas_.back()); }

 private:
  std::vector<double> log_sigmas_;  // ascending in t
};

// D(x; sigma) = x - sigma * eps(x / sqrt(sigma^2 + 1), t(sigma)) (Karras et al. 2022, Table 1, VP column).
torch::Tensor denoise_sigma(Denoiser& d, const SigmaSchedule& s, const torch::Tensor& x, double sigma);

}  // namespace ldm

// Euler, Euler ancestral, Heun and DPM++ 2M in sigma space, as k-diffusion
// and stable-diffusion.cpp run them (Karras et al. 2022, Alg. 1-2; Lu et al.
// 2022 for DPM++ 2M). x lives in VE space: x = x0 + sigma * n.
#include "ldm/models/diffusion/samplers/k_diffusion.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>

#include "ldm/models/diffusion/samplers/common.h"

namespace ldm {

SigmaSchedule::SigmaSchedule(const torch::Tensor& acp) {
  // from the float32 buffer, as k-diffusion reads model.alphas_cumprod
  auto a = acp.to(torch::kFloat32).cpu();
  auto s = ((1 - a) / a).sqrt().log().to(torch::kFloat64).contiguous();
  log_sigmas_.assign(s.data_ptr<double>(), s.data_ptr<double>() + s.numel());
}

double SigmaSchedule::t_to_sigma(double t) const {
  const int64_t n = static_cast<int64_t>(log_sigmas_.size());
  t = std::clamp(t, 0.0, static_cast<double>(n - 1));
  int64_t lo = static_cast<int64_t>(std::floor(t)), hi = std::min(lo + 1, n - 1);
  double w = t - lo;
  return std::exp((1 - w) * log_sigmas_[lo] + w * log_sigmas_[hi]);
}

double SigmaSchedule::sigma_to_t(double sigma) const {
  const int64_t n = static_cast<int64_t>(log_sigmas_.size());
  const double ls = std::log(sigma);
  int64_t lo = 0;  // last index with log_sigmas[lo] <= ls, at most n - 2
  while (lo + 1 < n - 1 && log_sigmas_[lo + 1] <= ls) ++lo;
  const double w = std::clamp((log_sigmas_[lo] - ls) / (log_sigmas_[lo] - log_sigmas_[lo + 1]), 0.0, 1.0);
  return (1 - w) * lo + w * (lo + 1);
}

std::vector<double> SigmaSchedule::sigmas(int64_t steps, const std::string& kind) const {
  std::vector<double> s(steps);
  const double T1 = static_cast<double>(log_sigmas_.size() - 1);
  for (int64_t i = 0; i < steps; ++i) {
    const double u = steps == 1 ? 0.0 : static_cast<double>(i) / (steps - 1);  // 0 -> 1
    if (kind == "karras") {
      const double rho = 7.0, lo = std::pow(sigma_min(), 1 / rho), hi = std::pow(sigma_max(), 1 / rho);
      s[i] = std::pow(hi + u * (lo - hi), rho);
    } else {
      s[i] = t_to_sigma(T1 * (1 - u));
    }
  }
  s.push_back(0.0);
  return s;
}

torch::Tensor denoise_sigma(Denoiser& d, const SigmaSchedule& s, const torch::Tensor& x, double sigma) {
  const double c_in = 1 / std::sqrt(sigma * sigma + 1);
  auto e = d.eps(x * c_in, s.sigma_to_t(sigma), 1 / (1 + sigma * sigma));
  return x - sigma * e;
}

namespace {
// The common loop: sigmas, img2img start, blending, callback; `step`
// advances x from sigmas[i] to sigmas[i+1] given the denoised x at sigmas[i].
template <class Step>
torch::Tensor k_loop(Denoiser& d, const torch::Tensor& noise, const SampleOptions& o, Step step) {
  SigmaSchedule sched(d.alphas_cumprod());
  auto sig = sched.sigmas(o.steps, o.schedule);
  const int64_t S = o.steps, skip = samplers::skipped_steps(S, o);
  auto x = samplers::start_ve(noise, sig[skip], o);
  for (int64_t i = skip; i < S; ++i) {
    x = samplers::blend_ve(x, sig[i], o);
    auto den = denoise_sigma(d, sched, x, sig[i]);
    x = step(sched, x, den, sig[i], sig[i + 1]);
    if (o.callback) o.callback(i - skip, S - skip, x, den);
  }
  return samplers::finish(x, o);
}
}  // namespace

torch::Tensor euler_sample(Denoiser& d, const torch::Tensor& noise, const SampleOptions& o) {
  return k_loop(d, noise, o, [](const SigmaSchedule&, const torch::Tensor& x, const torch::Tensor& den, double s, double sn) {
    return x + (x - den) / s * (sn - s);
  });
}

torch::Tensor euler_a_sample(Denoiser& d, const torch::Tensor& noise, const SampleOptions& o) {
  return k_loop(d, noise, o, [&o](const SigmaSchedule&, const torch::Tensor& x, const torch::Tensor& den, double s, double sn) {
    // ancestral split of the step (k-diffusion get_ancestral_step, eta = 1)
    const double up = std::min(sn, std::sqrt(sn * sn * (s * s - sn * sn) / (s * s)));
    const double down = std::sqrt(sn * sn - up * up);
    auto out = x + (x - den) / s * (down - s);
    return sn > 0 ? out + samplers::randn(x, o) * up : out;
  });
}

torch::Tensor heun_sample(Denoiser& d, const torch::Tensor& noise, const SampleOptions& o) {
  return k_loop(d, noise, o, [&d](const SigmaSchedule& sc, const torch::Tensor& x, const torch::Tensor& den, double s, double sn) {
    auto dx = (x - den) / s;
    auto x1 = x + dx * (sn - s);
    if (sn == 0) return x1;  // Euler on the last step
    auto dx2 = (x1 - denoise_sigma(d, sc, x1, sn)) / sn;
    return x + (dx + dx2) / 2 * (sn - s);
  });
}

torch::Tensor dpmpp_2m_sample(Denoiser& d, const torch::Tensor& noise, const SampleOptions& o) {
  torch::Tensor old;
  double h_last = 0;
  return k_loop(d, noise, o, [&](const SigmaSchedule&, const torch::Tensor& x, const torch::Tensor& den, double s, double sn) {
    torch::Tensor out;
    if (sn == 0) {
      out = den;
    } else {
      const double h = std::log(s) - std::log(sn);  // t = -log sigma
      torch::Tensor D = den;
      if (old.defined()) {
        const double r = h_last / h;
        D = (1 + 1 / (2 * r)) * den - (1 / (2 * r)) * old;
      }
      out = (sn / s) * x - std::expm1(-h) * D;
      h_last = h;
    }
    old = den;
    return out;
  });
}

}  // namespace ldm

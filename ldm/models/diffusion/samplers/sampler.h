// Sampler interface: a denoiser over the model's (fractional) timesteps, the
// options every sampler reads, and one entry point that picks a sampler by
// name. Each sampler is its own file.
#pragma once
#include <torch/types.h>

#include <functional>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "ldm/models/diffusion/ddpm.h"

namespace ldm {

// What samplers call: eps at timestep t (fractional for sigma-space samplers)
// with cumulative alpha `alpha` at t; x lives in the model's variance-preserving
// space. Implemented by GuidedDenoiser and, in tests, by exact closed forms.
class Denoiser {
 public:
  virtual ~Denoiser() = default;
  virtual torch::Tensor eps(const torch::Tensor& x, double t, double alpha) = 0;
  virtual torch::Tensor alphas_cumprod() const = 0;  // [T] float32, the training schedule
  torch::Tensor eps(const torch::Tensor& x, int64_t t);  // integer t: alpha from the schedule
  int64_t calls = 0;                                     // network evaluations
};

// eps prediction with classifier-free guidance: the UNet runs once on the
// batch [uncond, cond] and out = out_u + scale (out_c - out_u) (Ho & Salimans
// 2022); `uncond` is the negative prompt. v-models are guided on v, then
// converted to eps. With a guidance interval, steps whose noise level
// sigma = sqrt((1 - alpha) / alpha) lies outside (sigma_lo, sigma_hi] run the
// conditional model alone (Kynkaanniemi et al. 2024, "Applying guidance in a
// limited interval improves sample and distribution quality"): guidance at the
// highest noise narrows the distribution, at the lowest it adds little.
class GuidedDenoiser : public Denoiser {
 public:
  GuidedDenoiser(LatentDiffusion& model, Cond cond, Cond uncond = {}, double scale = 1.0);
  // guide only where sigma_lo < sigma <= sigma_hi (default: everywhere)
  void set_interval(double sigma_lo, double sigma_hi);
  // Guidance rescale phi in [0, 1] (Lin et al. 2024, "Common Diffusion Noise
  // Schedules and Sample Steps are Flawed", sec. 3.4; diffusers'
  // guidance_rescale): each guided prediction is scaled to the conditional
  // one's standard deviation, blended with the plain guided one by phi.
  // Counters the over-exposure of high guidance scales; 0 (default) is off.
  void set_rescale(double phi);
  using Denoiser::eps;
  torch::Tensor eps(const torch::Tensor& x, double t, double alpha) override;
  torch::Tensor alphas_cumprod() const override { return m_.schedule().alphas_cumprod; }
  LatentDiffusion& model() { return m_; }

 private:
  LatentDiffusion& m_;
  Cond cond_, uncond_, both_;
  double scale_;
  bool guided_;
  double sigma_lo_ = 0.0, sigma_hi_ = std::numeric_limits<double>::infinity();
  double rescale_ = 0.0;
};

struct SampleOptions {
  std::string sampler = "ddim";  // see sampler_names()
  int64_t steps = 50;
  double eta = 0.0;                       // ddim: 0 deterministic, 1 ancestral-like
  std::string discretize = "uniform";     // timestep spacing: uniform | quad (ddim, plms, ddpm, dpm_solver++)
  std::string schedule = "discrete";      // sigma schedule of the k-samplers: discrete | karras
  bool clip_denoised = false;             // ddpm: clamp predicted x0 to [-1, 1]
  std::optional<torch::Generator> generator;
  // one per batch row (when set, row i draws all its noise from generators[i]:
  // image i of a batch equals a batch of one with that generator's seed)
  std::vector<torch::Generator> generators;
  // img2img: start from x0 noised to `strength` (1 = pure noise) and run the rest.
  torch::Tensor x0;
  double strength = 1.0;
  // inpainting by latent blending: where mask == 1, keep x0 (noised to the current level).
  torch::Tensor mask;
  // after each step: (step index from 0, total, x, pred_x0)
  std::function<void(int64_t, int64_t, const torch::Tensor&, const torch::Tensor&)> callback;
};

const std::vector<std::string>& sampler_names();
// AUTOMATIC1111's name of a sampler ("euler_a" -> "Euler a"), as infotexts carry it.
std::string a1111_sampler_name(const std::string& name);
// Whether the sampler works in sigma space (the k-diffusion family), so that
// SampleOptions::schedule applies to it.
bool sampler_uses_sigma_schedule(const std::string& name);
// `noise` is standard normal, the shape of the latents; returns x_0.
torch::Tensor sample(Denoiser& d, const torch::Tensor& noise, const SampleOptions& o);

torch::Tensor ddpm_sample(Denoiser& d, const torch::Tensor& noise, const SampleOptions& o);
torch::Tensor ddim_sample(Denoiser& d, const torch::Tensor& noise, const SampleOptions& o);
torch::Tensor plms_sample(Denoiser& d, const torch::Tensor& noise, const SampleOptions& o);
torch::Tensor dpm_solver_pp_sample(Denoiser& d, const torch::Tensor& noise, const SampleOptions& o);
// k-diffusion family (Karras et al. 2022) in sigma space
torch::Tensor euler_sample(Denoiser& d, const torch::Tensor& noise, const SampleOptions& o);
torch::Tensor euler_a_sample(Denoiser& d, const torch::Tensor& noise, const SampleOptions& o);
torch::Tensor heun_sample(Denoiser& d, const torch::Tensor& noise, const SampleOptions& o);
torch::Tensor dpmpp_2m_sample(Denoiser& d, const torch::Tensor& noise, const SampleOptions& o);

}  // namespace ldm

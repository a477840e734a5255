#include <torch/torch.h>

#include <cmath>
#include <string>
#include <vector>

#include "ldm/error.h"
#include "ldm/util/number.h"
#include "ldm/models/diffusion/samplers/sampler.h"

namespace ldm {

namespace {
torch::Tensor cat2(const torch::Tensor& a, const torch::Tensor& b) {
  if (!a.defined() && !b.defined()) return {};
  return torch::cat({a, b}, 0);
}
}  // namespace

torch::Tensor Denoiser::eps(const torch::Tensor& x, int64_t t) {
  return eps(x, static_cast<double>(t), alphas_cumprod()[t].item<double>());
}

GuidedDenoiser::GuidedDenoiser(LatentDiffusion& m, Cond c, Cond u, double s)
    : m_(m), cond_(std::move(c)), uncond_(std::move(u)), scale_(s) {
  guided_ = scale_ != 1.0 && (uncond_.crossattn.defined() || uncond_.y.defined() || uncond_.concat.defined());
  // concatenated conditioning (inpainting mask + masked image) is the same on both sides unless given
  if (guided_ && !uncond_.concat.defined()) uncond_.concat = cond_.concat;
  if (guided_) both_ = {cat2(uncond_.crossattn, cond_.crossattn), cat2(uncond_.concat, cond_.concat), cat2(uncond_.y, cond_.y)};
}

void GuidedDenoiser::set_interval(double lo, double hi) {
  if (!(lo >= 0 && hi > lo))
    throw Error("guidance interval: expected 0 <= sigma_lo < sigma_hi, got " + format_number(lo) + ", " + format_number(hi));
  sigma_lo_ = lo;
  sigma_hi_ = hi;
}

void GuidedDenoiser::set_rescale(double phi) {
  if (!(phi >= 0 && phi <= 1)) throw Error("guidance rescale: expected 0 <= phi <= 1, got " + format_number(phi));
  rescale_ = phi;
}

torch::Tensor GuidedDenoiser::eps(const torch::Tensor& x, double t, double alpha) {
  ++calls;
  // Integer timesteps go in as int64 like the reference samplers; sigma-space
  // samplers pass fractional ones (the embedding is continuous in t).
  const bool integral = t == std::floor(t);
  auto topt = torch::TensorOptions().device(x.device()).dtype(integral ? torch::kInt64 : torch::kFloat32);
  const int64_t n = x.size(0);
  torch::Tensor out;
  const double sigma = std::sqrt((1 - alpha) / alpha);
  if (guided_ && sigma > sigma_lo_ && sigma <= sigma_hi_) {
    auto x_in = torch::cat({x, x}, 0);
    auto both = m_.apply_model(x_in, torch::full({2 * n}, t, topt), both_).chunk(2, 0);
    out = both[0] + scale_ * (both[1] - both[0]);
    if (rescale_ > 0) {  // on the model's own output (v or eps), as diffusers applies it
      std::vector<int64_t> dims;
      for (int64_t i = 1; i < out.dim(); ++i) dims.push_back(i);
      auto ratio = both[1].std(dims, /*unbiased=*/true, /*keepdim=*/true) /
                   out.std(dims, /*unbiased=*/true, /*keepdim=*/true).clamp_min(1e-12);
      out = out * (rescale_ * ratio + (1 - rescale_));  // phi (out ratio) + (1 - phi) out, blended on the [N, 1, ...] factor
    }
  } else {
    out = m_.apply_model(x, torch::full({n}, t, topt), cond_);
  }
  if (m_.options().schedule.parameterization != "v") return out;
  if (integral) return m_.predict_eps_from_v(x, torch::full({n}, t, topt), out);  // the reference's f32 buffers
  return std::sqrt(alpha) * out + std::sqrt(1 - alpha) * x;
}

}  // namespace ldm

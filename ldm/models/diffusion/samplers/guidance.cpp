#include <torch/torch.h>

#include "ldm/models/diffusion/samplers/sampler.h"

namespace ldm {

namespace {
torch::Tensor cat2(const torch::Tensor& a, const torch::Tensor& b) {
  if (!a.defined() && !b.defined()) return {};
  return torch::cat({a, b}, 0);
}
}  // namespace

GuidedDenoiser::GuidedDenoiser(LatentDiffusion& m, Cond c, Cond u, double s)
    : m_(m), cond_(std::move(c)), uncond_(std::move(u)), scale_(s) {
  guided_ = scale_ != 1.0 && (uncond_.crossattn.defined() || uncond_.y.defined() || uncond_.concat.defined());
  if (guided_) both_ = {cat2(uncond_.crossattn, cond_.crossattn), cat2(uncond_.concat, cond_.concat), cat2(uncond_.y, cond_.y)};
}

torch::Tensor GuidedDenoiser::eps(const torch::Tensor& x, int64_t t) {
  ++calls;
  torch::Tensor out;
  torch::Tensor tt;
  if (guided_) {
    auto x_in = torch::cat({x, x}, 0);
    tt = torch::full({x_in.size(0)}, t, torch::TensorOptions().dtype(torch::kInt64).device(x.device()));
    auto both = m_.apply_model(x_in, tt, both_).chunk(2, 0);
    out = both[0] + scale_ * (both[1] - both[0]);
  } else {
    tt = torch::full({x.size(0)}, t, torch::TensorOptions().dtype(torch::kInt64).device(x.device()));
    out = m_.apply_model(x, tt, cond_);
  }
  if (m_.options().schedule.parameterization == "v") return m_.predict_eps_from_v(x, tt.slice(0, 0, x.size(0)), out);
  return out;
}

}  // namespace ldm

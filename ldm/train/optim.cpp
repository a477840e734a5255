#include "ldm/train/optim.h"

#include "ldm/train/adamw_kernel.h"
#include "ldm/util/parallel.h"

#include <torch/torch.h>

#include <cmath>

namespace ldm {

namespace {
bool fusable(const torch::Tensor& p, const torch::optim::AdamWOptions& o) {
  const auto& g = p.grad();
  return !o.amsgrad() && p.device().is_cpu() && p.scalar_type() == torch::kFloat32 && p.is_contiguous() &&
         g.scalar_type() == torch::kFloat32 && g.is_contiguous() && !g.is_sparse();
}
}  // namespace

torch::Tensor FusedAdamW::step(LossClosure closure) {
  for (auto& group : param_groups())
    for (auto& p : group.params())
      if (p.grad().defined() && !fusable(p, static_cast<torch::optim::AdamWOptions&>(group.options())))
        return torch::optim::AdamW::step(std::move(closure));  // the general path for all, one formula per run
  torch::NoGradGuard ng;
  torch::Tensor loss;
  if (closure) {
    torch::AutoGradMode grad(true);
    loss = closure();
  }
  for (auto& group : param_groups()) {
    auto& o = static_cast<torch::optim::AdamWOptions&>(group.options());
    for (auto& p : group.params()) {
      if (!p.grad().defined()) continue;
      const std::string key = c10::guts::to_string(p.unsafeGetTensorImpl());
      auto it = state_.find(key);
      if (it == state_.end()) {
        auto st = std::make_unique<torch::optim::AdamWParamState>();
        st->step(0);
        st->exp_avg(torch::zeros_like(p, at::MemoryFormat::Contiguous));
        st->exp_avg_sq(torch::zeros_like(p, at::MemoryFormat::Contiguous));
        it = state_.emplace(key, std::move(st)).first;
      }
      auto& st = static_cast<torch::optim::AdamWParamState&>(*it->second);
      auto m = st.exp_avg(), v = st.exp_avg_sq();
      if (!m.is_contiguous() || !v.is_contiguous()) {  // a resumed state in another layout
        st.exp_avg(m.contiguous());
        st.exp_avg_sq(v.contiguous());
        m = st.exp_avg();
        v = st.exp_avg_sq();
      }
      st.step(st.step() + 1);
      const double beta1 = std::get<0>(o.betas()), beta2 = std::get<1>(o.betas());
      const double bc1 = 1 - std::pow(beta1, static_cast<double>(st.step()));
      const double bc2 = 1 - std::pow(beta2, static_cast<double>(st.step()));
      // torch.optim.AdamW: p *= 1 - lr*wd; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
      // p -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps), each constant rounded to float as ATen's scalar ops do
      const float decay = static_cast<float>(1 - o.lr() * o.weight_decay());
      const float b1 = static_cast<float>(beta1), a1 = static_cast<float>(1 - beta1);
      const float b2 = static_cast<float>(beta2), a2 = static_cast<float>(1 - beta2);
      const float sqrt_bc2 = static_cast<float>(std::sqrt(bc2)), eps = static_cast<float>(o.eps());
      const float step_size = static_cast<float>(-o.lr() / bc1);
      const bool decay_on = o.weight_decay() != 0;
      float* pd = p.data_ptr<float>();
      const float* gd = p.grad().data_ptr<float>();
      float* md = m.data_ptr<float>();
      float* vd = v.data_ptr<float>();
      at::parallel_for(0, p.numel(), 1 << 15, [&](int64_t lo, int64_t hi) {
        adamw_kernel(pd, gd, md, vd, lo, hi, decay_on, decay, b1, a1, b2, a2, sqrt_bc2, eps, step_size);
      });
    }
  }
  return loss;
}

}  // namespace ldm

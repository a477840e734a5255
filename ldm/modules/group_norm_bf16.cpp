#include "ldm/modules/group_norm_bf16.h"

#include <ATen/Parallel.h>

#include <vector>

#include "ldm/modules/group_norm_kernel.h"

namespace ldm {
namespace {

using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

const uint16_t* bits(const Tensor& t) { return reinterpret_cast<const uint16_t*>(t.data_ptr<at::BFloat16>()); }
uint16_t* mut_bits(Tensor& t) { return reinterpret_cast<uint16_t*>(t.data_ptr<at::BFloat16>()); }

struct Shape {
  int64_t n, c, hw, groups, cg;
  Shape(const Tensor& x, int64_t g) : n(x.size(0)), c(x.size(1)), hw(x.numel() / (n * c)), groups(g), cg(c / g) {}
  int64_t offset(int64_t i) const { return (i / groups * c + i % groups * cg) * hw; }  // task i = (sample, group)
};

// y, mean, rstd for contiguous bf16 x and float32 w, b
tensor_list forward_impl(const Tensor& x, const Tensor& w, const Tensor& b, int64_t groups, double eps, bool silu) {
  const Shape s(x, groups);
  auto y = torch::empty_like(x);
  auto mean = torch::empty({s.n, groups}, torch::kFloat32), rstd = torch::empty({s.n, groups}, torch::kFloat32);
  const uint16_t* xp = bits(x);
  uint16_t* yp = mut_bits(y);
  const float *wp = w.data_ptr<float>(), *bp = b.data_ptr<float>();
  float *mp = mean.data_ptr<float>(), *rp = rstd.data_ptr<float>();
  at::parallel_for(0, s.n * groups, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t g0 = i % groups * s.cg;
      group_norm_bf16_forward(xp + s.offset(i), wp + g0, bp + g0, yp + s.offset(i), s.cg, s.hw, float(eps), silu,
                              mp + i, rp + i);
    }
  });
  return {y, mean, rstd};
}

struct GroupNormBf16 : torch::autograd::Function<GroupNormBf16> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& w, const Tensor& b, int64_t groups,
                        double eps, bool silu) {
    auto wf = w.to(torch::kFloat32).contiguous(), bf = b.to(torch::kFloat32).contiguous();
    auto out = forward_impl(x, wf, bf, groups, eps, silu);
    ctx->save_for_backward({x, wf, bf, out[1], out[2]});
    ctx->saved_data["groups"] = groups;
    ctx->saved_data["silu"] = silu;
    ctx->saved_data["w_dtype"] = w.scalar_type();
    ctx->saved_data["b_dtype"] = b.scalar_type();
    return out[0];
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    const auto saved = ctx->get_saved_variables();
    const Tensor &x = saved[0], &w = saved[1], &b = saved[2], &mean = saved[3], &rstd = saved[4];
    const Shape s(x, ctx->saved_data["groups"].toInt());
    const bool silu = ctx->saved_data["silu"].toBool();
    auto dy = grads[0].to(torch::kBFloat16).contiguous();
    auto dx = torch::empty_like(x);
    auto dw = torch::empty({s.n, s.c}, torch::kFloat32), db = torch::empty({s.n, s.c}, torch::kFloat32);
    const uint16_t *xp = bits(x), *dyp = bits(dy);
    uint16_t* dxp = mut_bits(dx);
    const float *wp = w.data_ptr<float>(), *bp = b.data_ptr<float>(), *mp = mean.data_ptr<float>(),
                *rp = rstd.data_ptr<float>();
    float *dwp = dw.data_ptr<float>(), *dbp = db.data_ptr<float>();
    at::parallel_for(0, s.n * s.groups, 1, [&](int64_t i0, int64_t i1) {
      std::vector<float> scratch(s.cg * s.hw);
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t g0 = i % s.groups * s.cg, o = s.offset(i), per_sample = i / s.groups * s.c + g0;
        group_norm_bf16_backward(xp + o, dyp + o, wp + g0, bp + g0, s.cg, s.hw, mp[i], rp[i], silu, dxp + o,
                                 dwp + per_sample, dbp + per_sample, scratch.data());
      }
    });
    // per-sample partial sums reduced in a fixed order: deterministic whatever the threads
    return {dx, dw.sum(0).to(ctx->saved_data["w_dtype"].toScalarType()),
            db.sum(0).to(ctx->saved_data["b_dtype"].toScalarType()), Tensor(), Tensor(), Tensor()};
  }
};

}  // namespace

bool group_norm_bf16_applies(const Tensor& x) {
  return x.scalar_type() == torch::kBFloat16 && x.device().is_cpu() && x.dim() >= 2 && group_norm_bf16_available();
}

Tensor group_norm_bf16(const Tensor& x, int64_t groups, const Tensor& weight, const Tensor& bias, double eps,
                       bool silu) {
  TORCH_CHECK(group_norm_bf16_applies(x), "group_norm_bf16: expected a bf16 CPU tensor of 2+ dims on an AVX2 CPU");
  TORCH_CHECK(x.size(1) % groups == 0, "group_norm_bf16: ", x.size(1), " channels do not split into ", groups,
              " groups");
  auto xc = x.contiguous();
  const bool grad = torch::GradMode::is_enabled() && (x.requires_grad() || weight.requires_grad() || bias.requires_grad());
  if (grad) return GroupNormBf16::apply(xc, weight, bias, groups, eps, silu);
  return forward_impl(xc, weight.to(torch::kFloat32).contiguous(), bias.to(torch::kFloat32).contiguous(), groups, eps,
                      silu)[0];
}

}  // namespace ldm

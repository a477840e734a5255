#include "ldm/modules/group_norm_fused.h"

#include "ldm/util/parallel.h"

#include <vector>

#include "ldm/modules/group_norm_kernel.h"

namespace ldm {
namespace {

using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

template <typename T>
T* data(const Tensor& t);
template <>
float* data<float>(const Tensor& t) { return t.data_ptr<float>(); }
template <>
uint16_t* data<uint16_t>(const Tensor& t) { return reinterpret_cast<uint16_t*>(t.data_ptr<at::BFloat16>()); }

// x stored channels-last (a 4-d map that is not also plainly contiguous, as
// one of a single channel or pixel is): the kernels run along its channels
bool channels_last(const Tensor& x) {
  return x.dim() == 4 && !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
}
Tensor contiguous_like(const Tensor& t, const Tensor& like) {
  return channels_last(like) ? t.contiguous(at::MemoryFormat::ChannelsLast) : t.contiguous();
}

struct Shape {
  int64_t n, c, hw, groups, cg;
  Shape(const Tensor& x, int64_t g) : n(x.size(0)), c(x.size(1)), hw(x.numel() / (n * c)), groups(g), cg(c / g) {}
  int64_t offset(int64_t i) const { return (i / groups * c + i % groups * cg) * hw; }  // task i = (sample, group)
  // a (sample, group)'s first weight: rows of c per sample, or one row for all
  int64_t weight(int64_t i, const Tensor& w) const { return (w.size(0) == 1 ? 0 : i / groups * c) + i % groups * cg; }
};

// y, mean, rstd for contiguous x and float32 weights w, b of shape (1 or N, C)
template <typename T>
tensor_list forward_typed(const Tensor& x, const Tensor& w, const Tensor& b, int64_t groups, double eps, bool silu) {
  const Shape s(x, groups);
  auto y = torch::empty_like(x);
  auto mean = torch::empty({s.n, groups}, torch::kFloat32), rstd = torch::empty({s.n, groups}, torch::kFloat32);
  const T* xp = data<T>(x);
  T* yp = data<T>(y);
  const float *wp = w.data_ptr<float>(), *bp = b.data_ptr<float>();
  float *mp = mean.data_ptr<float>(), *rp = rstd.data_ptr<float>();
  if (channels_last(x)) {
    at::parallel_for(0, s.n, 1, [&](int64_t n0, int64_t n1) {
      for (int64_t n = n0; n < n1; ++n) {
        const int64_t o = n * s.c * s.hw, k = w.size(0) == 1 ? 0 : n * s.c;
        group_norm_kernel_forward_nhwc(xp + o, wp + k, bp + k, yp + o, s.hw, s.c, groups, float(eps), silu,
                                       mp + n * groups, rp + n * groups);
      }
    });
    return {y, mean, rstd};
  }
  at::parallel_for(0, s.n * groups, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t k = s.weight(i, w);
      group_norm_kernel_forward(xp + s.offset(i), wp + k, bp + k, yp + s.offset(i), s.cg, s.hw, float(eps), silu,
                                mp + i, rp + i);
    }
  });
  return {y, mean, rstd};
}

tensor_list forward_impl(const Tensor& x, const Tensor& w, const Tensor& b, int64_t groups, double eps, bool silu) {
  return x.scalar_type() == torch::kBFloat16 ? forward_typed<uint16_t>(x, w, b, groups, eps, silu)
                                              : forward_typed<float>(x, w, b, groups, eps, silu);
}

// dx and the per-sample sums dw = sum(g * xhat), db = sum(g), both (N, C)
template <typename T>
tensor_list backward_typed(const Tensor& x, const Tensor& dy, const Tensor& w, const Tensor& b, const Tensor& mean,
                           const Tensor& rstd, int64_t groups, bool silu) {
  const Shape s(x, groups);
  auto dx = torch::empty_like(x);
  auto dw = torch::empty({s.n, s.c}, torch::kFloat32), db = torch::empty({s.n, s.c}, torch::kFloat32);
  const T *xp = data<T>(x), *dyp = data<T>(dy);
  T* dxp = data<T>(dx);
  const float *wp = w.data_ptr<float>(), *bp = b.data_ptr<float>(), *mp = mean.data_ptr<float>(),
              *rp = rstd.data_ptr<float>();
  float *dwp = dw.data_ptr<float>(), *dbp = db.data_ptr<float>();
  if (channels_last(x)) {
    at::parallel_for(0, s.n, 1, [&](int64_t n0, int64_t n1) {
      std::vector<float> scratch(s.c * s.hw);
      for (int64_t n = n0; n < n1; ++n) {
        const int64_t o = n * s.c * s.hw, k = w.size(0) == 1 ? 0 : n * s.c;
        group_norm_kernel_backward_nhwc(xp + o, dyp + o, wp + k, bp + k, s.hw, s.c, groups, mp + n * groups,
                                        rp + n * groups, silu, dxp + o, dwp + n * s.c, dbp + n * s.c, scratch.data());
      }
    });
    return {dx, dw, db};
  }
  at::parallel_for(0, s.n * s.groups, 1, [&](int64_t i0, int64_t i1) {
    std::vector<float> scratch(s.cg * s.hw);
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t k = s.weight(i, w), o = s.offset(i), per_sample = i / s.groups * s.c + i % s.groups * s.cg;
      group_norm_kernel_backward(xp + o, dyp + o, wp + k, bp + k, s.cg, s.hw, mp[i], rp[i], silu, dxp + o,
                                 dwp + per_sample, dbp + per_sample, scratch.data());
    }
  });
  return {dx, dw, db};
}

Tensor as_float(const Tensor& t, int64_t rows, int64_t c) {
  return t.reshape({rows, c}).to(torch::kFloat32).contiguous();
}

// The float32 weights (1, C), the scale (N, C) or undefined, and the kernel's
// weights: w (1 + scale) and b (1 + scale) + shift per sample, or w and b.
// An undefined or empty scale means none.
struct Weights {
  Tensor w, b, s, we, be;
};
Weights prepare(const Tensor& x, const Tensor& w, const Tensor& b, const Tensor& scale, const Tensor& shift) {
  const int64_t n = x.size(0), c = x.size(1);
  Weights r{as_float(w, 1, c), as_float(b, 1, c), Tensor(), Tensor(), Tensor()};
  if (!scale.defined() || scale.numel() == 0) {
    r.we = r.w, r.be = r.b;
    return r;
  }
  r.s = as_float(scale, n, c);
  auto s1 = r.s + 1;
  r.we = (r.w * s1).contiguous(), r.be = (r.b * s1 + as_float(shift, n, c)).contiguous();
  return r;
}

struct GroupNormFused : torch::autograd::Function<GroupNormFused> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& w, const Tensor& b, const Tensor& scale,
                        const Tensor& shift, int64_t groups, double eps, bool silu) {
    // an empty scale means none: autograd::Function takes no undefined inputs
    const Weights p = prepare(x, w, b, scale, shift);
    auto out = forward_impl(x, p.we, p.be, groups, eps, silu);
    ctx->save_for_backward({x, p.we, p.be, out[1], out[2], p.w, p.b, p.s});
    ctx->saved_data["groups"] = groups;
    ctx->saved_data["silu"] = silu;
    ctx->saved_data["types"] = std::vector<int64_t>{int64_t(w.scalar_type()), int64_t(b.scalar_type()),
                                                    int64_t(scale.scalar_type()), int64_t(shift.scalar_type())};
    ctx->saved_data["scale_shape"] = scale.sizes().vec();
    return out[0];
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    const auto v = ctx->get_saved_variables();
    const Tensor &x = v[0], &we = v[1], &be = v[2], &mean = v[3], &rstd = v[4], &wf = v[5], &bf = v[6], &sf = v[7];
    const int64_t groups = ctx->saved_data["groups"].toInt();
    const bool silu = ctx->saved_data["silu"].toBool();
    const auto types = ctx->saved_data["types"].toIntVector();
    auto type = [&](int k) { return static_cast<torch::ScalarType>(types[k]); };
    auto dy = contiguous_like(grads[0].to(x.scalar_type()), x);
    auto g = x.scalar_type() == torch::kBFloat16 ? backward_typed<uint16_t>(x, dy, we, be, mean, rstd, groups, silu)
                                                  : backward_typed<float>(x, dy, we, be, mean, rstd, groups, silu);
    const Tensor &dwe = g[1], &dbe = g[2];
    // per-sample partial sums reduced in a fixed order: deterministic whatever the threads
    if (!sf.defined())
      return {g[0], dwe.sum(0).to(type(0)), dbe.sum(0).to(type(1)), Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
    // y = xhat we + be with we = w (1 + s), be = b (1 + s) + t (the chain rule per sample)
    const auto shape = ctx->saved_data["scale_shape"].toIntVector();
    auto s1 = sf + 1;
    return {g[0],
            (dwe * s1).sum(0).to(type(0)),
            (dbe * s1).sum(0).to(type(1)),
            (dwe * wf + dbe * bf).reshape(shape).to(type(2)),
            dbe.reshape(shape).to(type(3)),
            Tensor(),
            Tensor(),
            Tensor()};
  }
};

}  // namespace

bool group_norm_fused_applies(const Tensor& x) {
  const auto t = x.scalar_type();
  return (t == torch::kBFloat16 || t == torch::kFloat32) && x.device().is_cpu() && x.dim() >= 2 &&
         group_norm_kernel_available();
}

Tensor group_norm_fused(const Tensor& x, int64_t groups, const Tensor& weight, const Tensor& bias, double eps,
                        bool silu, const Tensor& scale, const Tensor& shift) {
  TORCH_CHECK(group_norm_fused_applies(x),
              "group_norm_fused: expected a float32 or bf16 CPU tensor of 2+ dims on an AVX2 CPU");
  TORCH_CHECK(x.size(1) % groups == 0, "group_norm_fused: ", x.size(1), " channels do not split into ", groups,
              " groups");
  TORCH_CHECK(scale.defined() == shift.defined(), "group_norm_fused: expected both scale and shift or neither");
  const int64_t nc = x.size(0) * x.size(1);
  TORCH_CHECK(!scale.defined() || (scale.numel() == nc && shift.numel() == nc), "group_norm_fused: expected ", nc,
              " scale and shift values (N x C), got ", scale.numel(), " and ", shift.numel());
  auto xc = channels_last(x) ? x : x.contiguous();
  auto needs = [](const Tensor& t) { return t.defined() && t.requires_grad(); };
  const bool grad = torch::GradMode::is_enabled() &&
                    (needs(x) || needs(weight) || needs(bias) || needs(scale) || needs(shift));
  if (grad) {
    auto none = torch::empty({0});
    return GroupNormFused::apply(xc, weight, bias, scale.defined() ? scale : none, shift.defined() ? shift : none,
                                 groups, eps, silu);
  }
  const Weights p = prepare(x, weight, bias, scale, shift);
  return forward_impl(xc, p.we, p.be, groups, eps, silu)[0];
}

}  // namespace ldm

#include "ldm/modules/relu_max_pool.h"

#include "ldm/util/parallel.h"

#include <algorithm>

#include "ldm/error.h"

namespace ldm {
namespace {
using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

// One plane's windows: out = max of the 2x2 window (first maximum, NaN wins,
// as libtorch's kernel), arg = its position 0-3 in the window. Selects, not
// branches, so the compiler vectorises the row.
void pool_plane(const float* x, int64_t h, int64_t w, float* out, uint8_t* arg) {
  const int64_t oh = h / 2, ow = w / 2;
  for (int64_t i = 0; i < oh; ++i) {
    const float* r0 = x + 2 * i * w;
    const float* r1 = r0 + w;
    float* o = out + i * ow;
    uint8_t* a = arg + i * ow;
    for (int64_t j = 0; j < ow; ++j) {
      const float v1 = r0[2 * j + 1], v2 = r1[2 * j], v3 = r1[2 * j + 1];
      float m = r0[2 * j];
      int k = 0;
      const bool t1 = v1 > m || v1 != v1;
      m = t1 ? v1 : m;
      k = t1 ? 1 : k;
      const bool t2 = v2 > m || v2 != v2;
      m = t2 ? v2 : m;
      k = t2 ? 2 : k;
      const bool t3 = v3 > m || v3 != v3;
      m = t3 ? v3 : m;
      k = t3 ? 3 : k;
      o[j] = m;
      a[j] = static_cast<uint8_t>(k);
    }
  }
}

// One plane's input gradient: every window written whole (the gradient at its
// argmax where the pooled output is not <= 0, relu's rule as libtorch's
// threshold_backward, which passes NaN), the odd trailing row/column zeroed.
void unpool_plane(const float* g, const float* out, const uint8_t* arg, int64_t h, int64_t w, float* gx) {
  const int64_t oh = h / 2, ow = w / 2;
  for (int64_t i = 0; i < oh; ++i) {
    float* r0 = gx + 2 * i * w;
    float* r1 = r0 + w;
    for (int64_t j = 0; j < ow; ++j) {
      const int64_t q = i * ow + j;
      const float v = out[q] <= 0 ? 0.f : g[q];
      const int k = arg[q];
      r0[2 * j] = k == 0 ? v : 0.f;
      r0[2 * j + 1] = k == 1 ? v : 0.f;
      r1[2 * j] = k == 2 ? v : 0.f;
      r1[2 * j + 1] = k == 3 ? v : 0.f;
    }
    if (w % 2) r0[w - 1] = r1[w - 1] = 0.f;
  }
  if (h % 2) std::fill(gx + (h - 1) * w, gx + h * w, 0.f);
}

struct ReluMaxPool : torch::autograd::Function<ReluMaxPool> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x) {
    const int64_t planes = x.size(0) * x.size(1), h = x.size(2), w = x.size(3), o = (h / 2) * (w / 2);
    auto xc = x.contiguous();
    auto out = torch::empty({x.size(0), x.size(1), h / 2, w / 2}, x.options());
    auto arg = torch::empty({planes, o}, x.options().dtype(torch::kUInt8));
    const float* xp = xc.data_ptr<float>();
    float* op = out.data_ptr<float>();
    uint8_t* ap = arg.data_ptr<uint8_t>();
    at::parallel_for(0, planes, 16, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) pool_plane(xp + p * h * w, h, w, op + p * o, ap + p * o);
    });
    out.clamp_min_(0);  // relu(max) == max(relu); NaN stays NaN
    ctx->save_for_backward({out, arg});
    ctx->saved_data["h"] = h;
    ctx->saved_data["w"] = w;
    return out;
  }
  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    auto saved = ctx->get_saved_variables();
    const auto& out = saved[0];
    const auto& arg = saved[1];
    const int64_t h = ctx->saved_data["h"].toInt(), w = ctx->saved_data["w"].toInt();
    const int64_t planes = out.size(0) * out.size(1), ow = w / 2, o = (h / 2) * ow;
    auto g = grads[0].contiguous();
    auto gx = torch::empty({out.size(0), out.size(1), h, w}, g.options());
    const float *gp = g.data_ptr<float>(), *op = out.data_ptr<float>();
    const uint8_t* ap = arg.data_ptr<uint8_t>();
    float* xp = gx.data_ptr<float>();
    at::parallel_for(0, planes, 16, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) unpool_plane(gp + p * o, op + p * o, ap + p * o, h, w, xp + p * h * w);
    });
    return {gx};
  }
};
}  // namespace

Tensor relu_max_pool2x2(const Tensor& x) {
  if (x.dim() != 4 || x.scalar_type() != torch::kFloat32 || !x.device().is_cpu())
    throw Error("relu_max_pool2x2: expected a float32 NCHW tensor on the CPU, got " + std::string(x.toString()) + " " +
                c10::str(x.sizes()));
  if (x.size(2) < 2 || x.size(3) < 2)
    throw Error("relu_max_pool2x2: expected at least 2x2 pixels, got " + c10::str(x.sizes()));
  return ReluMaxPool::apply(x);
}

}  // namespace ldm

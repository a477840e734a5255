#include "ldm/modules/relu_max_pool.h"

#include <ATen/Parallel.h>

#include <cmath>

#include "ldm/error.h"

namespace ldm {
namespace {
using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

// One plane's windows: out = max of the 2x2 window (first maximum, NaN wins,
// as libtorch's kernel), arg = its position 0-3 in the window.
void pool_plane(const float* x, int64_t h, int64_t w, float* out, uint8_t* arg) {
  const int64_t oh = h / 2, ow = w / 2;
  for (int64_t i = 0; i < oh; ++i) {
    const float* r0 = x + 2 * i * w;
    const float* r1 = r0 + w;
    for (int64_t j = 0; j < ow; ++j) {
      const float v[4] = {r0[2 * j], r0[2 * j + 1], r1[2 * j], r1[2 * j + 1]};
      float m = v[0];
      uint8_t a = 0;
      for (uint8_t k = 1; k < 4; ++k)
        if (v[k] > m || std::isnan(v[k])) {
          m = v[k];
          a = k;
        }
      out[i * ow + j] = m;
      arg[i * ow + j] = a;
    }
  }
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
    auto gx = torch::zeros({out.size(0), out.size(1), h, w}, g.options());
    const float *gp = g.data_ptr<float>(), *op = out.data_ptr<float>();
    const uint8_t* ap = arg.data_ptr<uint8_t>();
    float* xp = gx.data_ptr<float>();
    at::parallel_for(0, planes, 16, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p)
        for (int64_t q = 0; q < o; ++q) {
          // relu's gradient: none where the output is <= 0 (NaN passes, as libtorch's threshold_backward)
          if (op[p * o + q] <= 0) continue;
          const int64_t i = q / ow, j = q % ow, a = ap[p * o + q];
          xp[p * h * w + (2 * i + a / 2) * w + 2 * j + a % 2] = gp[p * o + q];
        }
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

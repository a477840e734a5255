#include "ldm/modules/small_bmm.h"

#include "ldm/util/parallel.h"

namespace ldm {

namespace {
// C = A @ B for one row-major matrix: rows of B accumulated into rows of C,
// the inner loop contiguous so that the compiler vectorises it; an AVX2/FMA
// clone is picked at load time where the CPU has it (the build is baseline).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("arch=haswell", "default")))
#endif
void matmul_rows(const float* __restrict a, const float* __restrict b, float* __restrict c, int64_t n, int64_t k, int64_t m) {
  for (int64_t i = 0; i < n; ++i) {
    float* ci = c + i * m;
    for (int64_t j = 0; j < m; ++j) ci[j] = 0.f;
    for (int64_t p = 0; p < k; ++p) {
      const float aip = a[i * k + p];
      const float* bp = b + p * m;
      for (int64_t j = 0; j < m; ++j) ci[j] += aip * bp[j];
    }
  }
}

torch::Tensor small_bmm_forward(const torch::Tensor& a_in, const torch::Tensor& b_in) {
  auto a = a_in.contiguous(), b = b_in.contiguous();
  const int64_t B = a.size(0), n = a.size(1), k = a.size(2), m = b.size(2);
  auto c = torch::empty({B, n, m}, a.options());
  const float *ap = a.data_ptr<float>(), *bp = b.data_ptr<float>();
  float* cp = c.data_ptr<float>();
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, n * k * m));
  at::parallel_for(0, B, grain, [&](int64_t b0, int64_t b1) {
    for (int64_t i = b0; i < b1; ++i) matmul_rows(ap + i * n * k, bp + i * k * m, cp + i * n * m, n, k, m);
  });
  return c;
}

struct SmallBmm : torch::autograd::Function<SmallBmm> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& a, const torch::Tensor& b) {
    ctx->save_for_backward({a, b});
    return small_bmm_forward(a, b);
  }
  // d(a b) = da b + a db: grad_a = g b^T, grad_b = a^T g
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const auto& g = grads[0];
    torch::Tensor ga, gb;
    if (ctx->needs_input_grad(0)) ga = small_bmm_forward(g, saved[1].transpose(1, 2));
    if (ctx->needs_input_grad(1)) gb = small_bmm_forward(saved[0].transpose(1, 2), g);
    return {ga, gb};
  }
};
}  // namespace

bool small_bmm_pays(const torch::Tensor& a, const torch::Tensor& b) {
  return a.dim() == 3 && b.dim() == 3 && a.device().is_cpu() && a.scalar_type() == torch::kFloat32 &&
         b.scalar_type() == torch::kFloat32 && a.size(0) == b.size(0) && a.size(2) == b.size(1) && a.size(0) >= 8 &&
         a.size(1) * a.size(2) * b.size(2) <= kSmallBmmMaxWork;
}

torch::Tensor small_bmm(const torch::Tensor& a, const torch::Tensor& b) {
  TORCH_CHECK(a.dim() == 3 && b.dim() == 3 && a.size(0) == b.size(0) && a.size(2) == b.size(1),
              "small_bmm: expected [B, n, k] and [B, k, m], got ", a.sizes(), " and ", b.sizes());
  TORCH_CHECK(a.scalar_type() == torch::kFloat32 && b.scalar_type() == torch::kFloat32 && a.device().is_cpu(),
              "small_bmm: fp32 CPU tensors only");
  return SmallBmm::apply(a, b);
}

}  // namespace ldm

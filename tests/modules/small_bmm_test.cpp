// small_bmm (many tiny matrices, with autograd) against float64 torch::bmm:
// the product and both gradients, for the fashion UNet's attention shapes,
// odd sizes (the vectorised loop's remainders) and non-contiguous inputs.
#include <torch/torch.h>

#include <array>

#include "ldm/modules/attention.h"
#include "ldm/modules/small_bmm.h"
#include "tests/testing.h"

using namespace ldm;

namespace {
double max_err(const torch::Tensor& got, const torch::Tensor& want) {
  return (got.to(torch::kFloat64) - want).abs().max().item<double>();
}
}  // namespace

TEST(SmallBmm, ProductAndGradientsEqualBmm) {
  auto g = torch::make_generator<at::CPUGeneratorImpl>(3);
  // [B, n, k, m]: q k^T and p v of 16 tokens x 32 per head, cross-attention's
  // single key, odd sizes, one row, the largest size it takes
  const std::vector<std::array<int64_t, 4>> shapes = {
      {256, 16, 32, 16}, {256, 16, 16, 32}, {256, 16, 32, 1}, {33, 7, 13, 5}, {9, 1, 3, 17}, {8, 64, 64, 64}};
  for (auto [B, n, k, m] : shapes) {
    auto a = torch::randn({B, n, k}, g).requires_grad_(), b = torch::randn({B, k, m}, g).requires_grad_();
    auto a64 = a.detach().to(torch::kFloat64).requires_grad_(), b64 = b.detach().to(torch::kFloat64).requires_grad_();
    auto up = torch::randn({B, n, m}, g);
    auto got = small_bmm(a, b);
    auto want = torch::bmm(a64, b64);
    got.backward(up);
    want.backward(up.to(torch::kFloat64));
    const double tol = 1e-6 * std::max<int64_t>({k, n, m});  // float32 sums of that many terms of size ~1
    EXPECT_LT(max_err(got, want), tol) << B << "x" << n << "x" << k << "x" << m;
    EXPECT_LT(max_err(a.grad(), a64.grad()), tol) << "grad a, " << B << "x" << n << "x" << k << "x" << m;
    EXPECT_LT(max_err(b.grad(), b64.grad()), tol) << "grad b, " << B << "x" << n << "x" << k << "x" << m;
  }
  // transposed (non-contiguous) operands, as attention passes k^T
  auto a = torch::randn({40, 12, 16}, g), kt = torch::randn({40, 12, 16}, g).transpose(1, 2);
  EXPECT_LT(max_err(small_bmm(a, kt), torch::bmm(a.to(torch::kFloat64), kt.to(torch::kFloat64))), 1e-5);
}

TEST(SmallBmm, TakenOnlyWhereItPays) {
  EXPECT_TRUE(small_bmm_pays(torch::zeros({256, 16, 32}), torch::zeros({256, 32, 16})));
  EXPECT_FALSE(small_bmm_pays(torch::zeros({16, 4096, 40}), torch::zeros({16, 40, 4096})));  // SD 1.5 at 512²: BLAS
  EXPECT_FALSE(small_bmm_pays(torch::zeros({2, 16, 32}), torch::zeros({2, 32, 16})));        // two matrices: BLAS
  EXPECT_FALSE(small_bmm_pays(torch::zeros({256, 16, 32}, torch::kFloat64), torch::zeros({256, 32, 16}, torch::kFloat64)));
  EXPECT_THROW(small_bmm(torch::zeros({4, 3, 2}), torch::zeros({4, 3, 2})), c10::Error);
}

// The training path of attention() (gradients on), at the fashion UNet's
// self-attention shape, against the float64 one-shot formula.
TEST(SmallBmm, TrainingAttentionMatchesFloat64) {
  auto g = torch::make_generator<at::CPUGeneratorImpl>(4);
  auto q = torch::randn({256, 16, 32}, g).requires_grad_(), k = torch::randn({256, 16, 32}, g).requires_grad_(),
       v = torch::randn({256, 16, 32}, g).requires_grad_();
  std::vector<torch::Tensor> x64;
  for (auto& t : {q, k, v}) x64.push_back(t.detach().to(torch::kFloat64).requires_grad_());
  const double scale = 1.0 / std::sqrt(32.0);
  auto up = torch::randn({256, 16, 32}, g);
  auto got = attention(q, k, v, scale);
  auto want = torch::bmm(torch::bmm(x64[0], x64[1].transpose(1, 2)).mul(scale).softmax(-1), x64[2]);
  got.backward(up);
  want.backward(up.to(torch::kFloat64));
  EXPECT_LT(max_err(got, want), 1e-5);
  EXPECT_LT(max_err(q.grad(), x64[0].grad()), 1e-5);
  EXPECT_LT(max_err(k.grad(), x64[1].grad()), 1e-5);
  EXPECT_LT(max_err(v.grad(), x64[2].grad()), 1e-5);
}

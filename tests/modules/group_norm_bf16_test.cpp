// The fused bf16 GroupNorm (+ SiLU) kernel against float64 torch::group_norm:
// output and the gradients of x, weight and bias, for the fashion UNet's
// shapes, odd spatial sizes (the vector loops' tails), groups larger than the
// kernel's summation block, and a 3-d input.
#include <torch/torch.h>

#include <array>

#include "ldm/modules/group_norm_bf16.h"
#include "ldm/modules/layers.h"
#include "tests/testing.h"

using namespace ldm;

namespace {
// max over elements of |got - want| / (rel |want| + abs)
double excess(const torch::Tensor& got, const torch::Tensor& want, double rel, double abs) {
  auto w = want.to(torch::kFloat64);
  return ((got.to(torch::kFloat64) - w).abs() / (w.abs() * rel + abs)).max().item<double>();
}
}  // namespace

TEST(GroupNormBf16, MatchesFloat64WithGradients) {
  if (!group_norm_bf16_applies(torch::zeros({1, 1}, torch::kBFloat16))) GTEST_SKIP() << "this CPU lacks AVX2/FMA";
  auto gen = torch::make_generator<at::CPUGeneratorImpl>(5);
  struct Case { std::vector<int64_t> shape; int64_t groups; };
  const std::vector<Case> cases = {{{4, 32, 16, 16}, 32}, {{3, 64, 4, 4}, 32}, {{2, 12, 5, 3}, 4},
                                   {{1, 8, 70, 70}, 2},   {{2, 16, 9}, 4}};
  for (const auto& cs : cases) {
    for (bool silu : {false, true}) {
      const int64_t c = cs.shape[1];
      auto x = (torch::randn(cs.shape, gen) * 3 + 1).to(torch::kBFloat16).requires_grad_();
      auto w = (torch::randn({c}, gen) + 1).requires_grad_(), b = torch::randn({c}, gen).requires_grad_();
      auto up = torch::randn(cs.shape, gen).to(torch::kBFloat16);
      auto y = group_norm_bf16(x, cs.groups, w, b, 1e-5, silu);
      y.backward(up);

      auto x64 = x.detach().to(torch::kFloat64).requires_grad_();
      auto w64 = w.detach().to(torch::kFloat64).requires_grad_(), b64 = b.detach().to(torch::kFloat64).requires_grad_();
      auto y64 = torch::group_norm(x64, cs.groups, w64, b64, 1e-5);
      if (silu) y64 = torch::silu(y64);
      y64.backward(up.to(torch::kFloat64));

      const std::string what = c10::str(cs.shape, " groups ", cs.groups, silu ? " +silu" : "");
      EXPECT_EQ(y.scalar_type(), torch::kBFloat16);
      EXPECT_EQ(x.grad().scalar_type(), torch::kBFloat16);
      // bf16 outputs: one rounding (2^-8 relative: 8 significant bits) over float32 arithmetic
      EXPECT_LT(excess(y, y64, 4e-3, 1e-5), 1.0) << what;
      const double dx_scale = x64.grad().abs().max().item<double>();
      EXPECT_LT(excess(x.grad(), x64.grad(), 4e-3, 1e-4 * dx_scale), 1.0) << "dx " << what;
      // float32 sums over n * hw terms
      const double n_terms = double(x.numel()) / double(c);
      EXPECT_LT(excess(w.grad(), w64.grad(), 1e-4, 1e-6 * n_terms), 1.0) << "dw " << what;
      EXPECT_LT(excess(b.grad(), b64.grad(), 1e-4, 1e-6 * n_terms), 1.0) << "db " << what;

      torch::NoGradGuard ng;  // the inference path computes the same
      EXPECT_TRUE(torch::equal(group_norm_bf16(x.detach(), cs.groups, w, b, 1e-5, silu), y.detach())) << what;
    }
  }
}

// GroupNorm's module path on bf16 inputs (autocast, bf16 inference; the kernel
// where the CPU has AVX2) gives what the float32 path gives, rounded once.
TEST(GroupNormBf16, ModulePathAgreesWithFloat32Path) {
  if (!group_norm_bf16_applies(torch::zeros({1, 1}, torch::kBFloat16))) GTEST_SKIP() << "this CPU lacks AVX2/FMA";
  auto gen = torch::make_generator<at::CPUGeneratorImpl>(6);
  nn::GroupNorm gn(32, 64, 1e-6);
  {
    torch::NoGradGuard ng;
    gn.weight.copy_(torch::randn({64}, gen) + 1);
    gn.bias.copy_(torch::randn({64}, gen));
  }
  auto x = torch::randn({2, 64, 8, 8}, gen).to(torch::kBFloat16);
  auto want = torch::silu(torch::group_norm(x.to(torch::kFloat32), 32, gn.weight, gn.bias, 1e-6));
  EXPECT_LT(excess(gn.forward_silu(x), want, 4e-3, 1e-5), 1.0);
  EXPECT_EQ(gn.forward_silu(x).scalar_type(), torch::kBFloat16);
  EXPECT_THROW(group_norm_bf16(x, 3, gn.weight, gn.bias, 1e-6, true), c10::Error);  // 64 channels, 3 groups
}

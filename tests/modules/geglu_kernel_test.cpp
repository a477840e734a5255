// GEGLU's one-pass kernel against a float64 a * GELU(gate) with the exact erf,
// on widths with and without whole vectors, saturating and zero gates; and
// FeedForward's inference path (the kernel) against its training path
// (libtorch's GELU).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "ldm/modules/attention.h"
#include "ldm/modules/geglu_kernel.h"
#include "tests/testing.h"

using namespace ldm;

TEST(Geglu, MatchesFloat64OnOddWidthsAndSaturatedGates) {
  if (!geglu_available()) GTEST_SKIP() << "this CPU has no AVX2/FMA: libtorch's GELU runs instead";
  torch::manual_seed(4);
  for (auto [rows, n] : std::vector<std::pair<int64_t, int64_t>>{{7, 1280}, {3, 13}, {1, 5}, {5, 64}}) {
    auto h = torch::randn({rows, 2 * n}) * 3;
    h[0][n] = 0.0f;                   // GELU(0) = 0
    if (n > 2) h[0][n + 1] = -12.0f;  // erf saturates: GELU(-12) ~ 0
    if (n > 2) h[0][n + 2] = 12.0f;   // GELU(12) = 12
    auto out = torch::empty({rows, n});
    geglu_rows(h.data_ptr<float>(), 2 * n, out.data_ptr<float>(), rows, n);
    auto h64 = h.to(torch::kFloat64);
    auto a = h64.narrow(1, 0, n), g = h64.narrow(1, n, n);
    auto want = a * 0.5 * g * (1 + torch::erf(g / std::sqrt(2.0)));
    // A&S 7.1.26's 1.5e-7 in erf, times |a g| / 2, plus float32 rounding
    auto bound = (a * g).abs() * 1e-7 + want.abs() * 1e-6 + 1e-7;
    EXPECT_TRUE(((out.to(torch::kFloat64) - want).abs() <= bound).all().item<bool>()) << rows << "x" << n;
  }
}

// bf16: the float64 result rounded once to bf16, give or take one bf16 step
// (the float32 arithmetic may land either side of a rounding boundary); NaN
// stays NaN, and libtorch's two-rounding path is no closer.
TEST(Geglu, Bf16RoundsTheFloat32ResultOnce) {
  if (!geglu_available()) GTEST_SKIP() << "this CPU has no AVX2/FMA: libtorch's GELU runs instead";
  torch::manual_seed(6);
  for (auto [rows, n] : std::vector<std::pair<int64_t, int64_t>>{{7, 1280}, {3, 13}, {1, 5}}) {
    auto h = (torch::randn({rows, 2 * n}) * 3).to(torch::kBFloat16);
    h[0][n] = std::nan("");
    auto out = torch::empty({rows, n}, torch::kBFloat16);
    auto u16 = [](const torch::Tensor& t) { return reinterpret_cast<uint16_t*>(t.data_ptr<at::BFloat16>()); };
    geglu_rows_bf16(u16(h), 2 * n, u16(out), rows, n);
    EXPECT_TRUE(std::isnan(out[0][0].item<float>()));
    auto h64 = h.to(torch::kFloat64);
    auto a = h64.narrow(1, 0, n), g = h64.narrow(1, n, n);
    auto want = a * 0.5 * g * (1 + torch::erf(g / std::sqrt(2.0)));
    auto got = out.to(torch::kFloat64), ok = want.isnan().logical_not();
    // one bf16 step (2^-7 of the value) beside A&S 7.1.26's erf error, |a g| 1e-7 (the float32 test's bound)
    auto ulp = (want.abs() * std::ldexp(1.0, -7) + (a * g).abs() * 1e-7 + 1e-7).masked_select(ok);
    auto err = (got - want).abs().masked_select(ok);
    EXPECT_TRUE((err <= ulp).all().item<bool>()) << rows << "x" << n;
    auto aten = (h.narrow(1, 0, n) * torch::gelu(h.narrow(1, n, n).contiguous())).to(torch::kFloat64);
    EXPECT_LE(err.sum().item<double>(), (aten - want).abs().masked_select(ok).sum().item<double>()) << rows << "x" << n;
  }
}

TEST(Geglu, FeedForwardInferenceMatchesItsTrainingPath) {
  torch::manual_seed(5);
  FeedForward ff(40, 4, true);
  auto x = torch::randn({2, 9, 40});
  auto train = ff.forward(x);  // the weights require grad: libtorch's GELU path
  ASSERT_TRUE(train.requires_grad());
  torch::NoGradGuard ng;
  auto infer = ff.forward(x);
  EXPECT_LT(test::max_abs_err(infer.to(torch::kFloat64), train.detach().to(torch::kFloat64)),
            1e-5 * train.abs().max().item<double>());
  // bf16 weights (--precision bf16): the kernel's path against libtorch's on the same bf16 projection
  ff.to(torch::kBFloat16);
  auto xb = x.to(torch::kBFloat16);
  auto fast = ff.forward(xb);
  ASSERT_EQ(fast.scalar_type(), torch::kBFloat16);
  auto h = ff.proj_in->forward(xb).chunk(2, -1);
  auto slow = ff.proj_out->forward(h[0] * torch::gelu(h[1]));
  EXPECT_LT(test::max_abs_err(fast.to(torch::kFloat64), slow.to(torch::kFloat64)),
            0.05 * slow.abs().max().item<double>());
}

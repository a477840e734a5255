// oneDNN's matmul for inference linear layers against a float64 linear (an
// independent computation), and when it must step aside.
#include <ATen/autocast_mode.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "ldm/modules/fast_conv.h"
#include "ldm/modules/fast_linear.h"
#include "ldm/modules/layers.h"
#include "tests/testing.h"

using namespace ldm;

namespace {
torch::Tensor linear64(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b) {
  auto y = torch::matmul(x.to(torch::kFloat64), w.to(torch::kFloat64).t());
  return b.defined() ? y + b.to(torch::kFloat64) : y;
}
}  // namespace

TEST(FastLinear, MatchesFloat64LinearOnTheUNetsShapesAndOddOnes) {
  if (!nn::fast_conv_available()) GTEST_SKIP() << "built without oneDNN: libtorch's linear only";
  torch::manual_seed(0);
  torch::NoGradGuard ng;
  struct Case {
    std::vector<int64_t> x;
    int64_t out;
    bool bias;
  };
  // attention projections (2 images x tokens x 320), GEGLU, a time embedding (2-d), odd sizes, no bias
  const std::vector<Case> cases = {{{2, 256, 320}, 320, true}, {{2, 64, 320}, 2560, true}, {{2, 320}, 1280, true},
                                   {{3, 7, 13}, 5, true},      {{17, 33}, 19, false},       {{1, 1, 1, 8}, 3, true}};
  for (const auto& k : cases) {
    nn::Linear l(k.x.back(), k.out, k.bias);
    auto x = torch::randn(k.x);
    auto y = nn::fast_linear(x, l.weight, l.bias);
    ASSERT_TRUE(y.defined()) << "fast path not taken for " << x.sizes();
    auto ref = linear64(x, l.weight, l.bias);
    ASSERT_EQ(y.sizes(), ref.sizes());
    EXPECT_EQ(y.scalar_type(), torch::kFloat32);
    EXPECT_LT(test::max_abs_err(y.to(torch::kFloat64), ref), 1e-5 * ref.abs().max().item<double>()) << x.sizes();
    EXPECT_TRUE(torch::equal(l.forward(x), y)) << "Linear::forward takes the fast path";
  }
  // a transposed (non-contiguous) input and a weight view
  nn::Linear l(24, 10);
  auto xt = torch::randn({24, 6}).t();
  auto y = nn::fast_linear(xt, l.weight, l.bias);
  ASSERT_TRUE(y.defined());
  EXPECT_LT(test::max_abs_err(y.to(torch::kFloat64), linear64(xt, l.weight, l.bias)), 1e-5);
  auto wt = torch::randn({24, 10}).t();
  EXPECT_LT(test::max_abs_err(nn::fast_linear(xt, wt, {}).to(torch::kFloat64), linear64(xt, wt, {})), 1e-5);
}

TEST(FastLinear, StepsAsideForAutogradAutocastOtherDtypesAndTheSwitch) {
  torch::manual_seed(1);
  nn::Linear l(16, 8);
  auto x = torch::randn({4, 16});
  {  // the weights require grad: a training forward keeps libtorch's differentiable linear
    auto y = l.forward(x);
    EXPECT_FALSE(nn::fast_linear(x, l.weight, l.bias).defined());
    EXPECT_TRUE(y.requires_grad());
  }
  torch::NoGradGuard ng;
  {
    at::autocast::set_cpu_enabled(true);
    EXPECT_FALSE(nn::fast_linear(x, l.weight, l.bias).defined()) << "autocast decides the dtype";
    at::autocast::set_cpu_enabled(false);
  }
  EXPECT_FALSE(nn::fast_linear(x.to(torch::kBFloat16), l.weight.to(torch::kBFloat16), {}).defined());
  EXPECT_FALSE(nn::fast_linear(x, l.weight.to(torch::kBFloat16), {}).defined()) << "mixed dtypes";
  EXPECT_FALSE(nn::fast_linear(x.to(torch::kFloat64), l.weight.to(torch::kFloat64), {}).defined());
  EXPECT_FALSE(nn::fast_linear(torch::randn({4, 15}), l.weight, l.bias).defined()) << "mismatched width";
  nn::set_fast_linear(false);
  EXPECT_FALSE(nn::fast_linear(x, l.weight, l.bias).defined());
  nn::set_fast_linear(true);
  if (nn::fast_conv_available()) EXPECT_TRUE(nn::fast_linear(x, l.weight, l.bias).defined());
}

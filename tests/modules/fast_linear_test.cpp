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
  {  // bf16 where oneDNN has AMX kernels (with a residual post-op), within bf16 rounding of float32's result
    auto xb = x.to(torch::kBFloat16), wb = l.weight.to(torch::kBFloat16), bb = l.bias.to(torch::kBFloat16);
    auto rb = torch::randn({4, 8}).to(torch::kBFloat16);
    auto y = nn::fast_linear(xb, wb, bb, rb);
    EXPECT_EQ(y.defined(), nn::fast_conv_bf16_available());
    if (y.defined()) {
      auto f = [](const torch::Tensor& t) { return t.to(torch::kFloat32); };
      auto want = torch::nn::functional::linear(f(xb), f(wb), f(bb)) + f(rb);
      EXPECT_EQ(y.scalar_type(), torch::kBFloat16);
      EXPECT_LT(test::max_abs_err(f(y), want), 1e-2 * want.abs().max().item<double>());
      at::autocast::set_cpu_enabled(true);  // bf16 autocast would cast nothing
      EXPECT_TRUE(nn::fast_linear(xb, wb, bb).defined());
      at::autocast::set_cpu_enabled(false);
    }
  }
  EXPECT_FALSE(nn::fast_linear(x, l.weight.to(torch::kBFloat16), {}).defined()) << "mixed dtypes";
  EXPECT_FALSE(nn::fast_linear(x.to(torch::kFloat64), l.weight.to(torch::kFloat64), {}).defined());
  EXPECT_FALSE(nn::fast_linear(torch::randn({4, 15}), l.weight, l.bias).defined()) << "mismatched width";
  nn::set_fast_linear(false);
  EXPECT_FALSE(nn::fast_linear(x, l.weight, l.bias).defined());
  nn::set_fast_linear(true);
  if (nn::fast_conv_available()) EXPECT_TRUE(nn::fast_linear(x, l.weight, l.bias).defined());
}

namespace {
// conv2d with 1x1 weights in float64: tokens [B, H*W, O] or the NCHW map
torch::Tensor conv1x1_64(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b) {
  return torch::conv2d(x.to(torch::kFloat64), w.to(torch::kFloat64), b.defined() ? b.to(torch::kFloat64) : b);
}
torch::Tensor tokens_of(const torch::Tensor& y) { return y.permute({0, 2, 3, 1}).reshape({y.size(0), -1, y.size(1)}); }
}  // namespace

// A transformer's 1x1 projections with the layout change folded in: tokens out
// of an NCHW map, and a map plus residual out of tokens, against float64
// conv2d; Conv's methods take the fast path, and the same numbers come from
// their fallback (the switch off, a LoRA adapter, a channels-last input).
TEST(FastLinear, ConvOneByOneToAndFromTokens) {
  torch::manual_seed(2);
  torch::NoGradGuard ng;
  struct Case {
    int64_t B, C, O, H, W;
    bool bias;
  };
  for (auto k : std::vector<Case>{{2, 320, 320, 16, 16}, {1, 24, 40, 5, 7}, {3, 8, 16, 1, 3}, {2, 64, 32, 4, 4}}) {
    nn::Conv c(2, k.C, k.O, 1, 1, 0, k.bias);
    auto x = torch::randn({k.B, k.C, k.H, k.W});
    const auto want = tokens_of(conv1x1_64(x, c.weight, c.bias));
    auto t = nn::fast_conv1x1_to_tokens(x, c.weight, c.bias);
    if (!nn::fast_conv_available()) {
      EXPECT_FALSE(t.defined());
    } else {
      ASSERT_TRUE(t.defined()) << "fast path not taken for " << x.sizes();
      ASSERT_EQ(t.sizes(), want.sizes());
      EXPECT_LT(test::max_abs_err(t.to(torch::kFloat64), want), 1e-5 * want.abs().max().item<double>()) << x.sizes();
      EXPECT_TRUE(torch::equal(c.forward_to_tokens(x), t));
    }
    // back: tokens [B, H*W, O] through a 1x1 conv O -> C, plus a residual [B, C, H, W]
    nn::Conv back(2, k.O, k.C, 1, 1, 0, k.bias);
    auto h = torch::randn({k.B, k.H * k.W, k.O}), r = torch::randn({k.B, k.C, k.H, k.W});
    auto map = h.transpose(1, 2).reshape({k.B, k.O, k.H, k.W});
    const auto want_back = conv1x1_64(map, back.weight, back.bias) + r.to(torch::kFloat64);
    auto y = back.forward_from_tokens(h, r, c10::MemoryFormat::Contiguous);
    ASSERT_EQ(y.sizes(), r.sizes());
    EXPECT_LT(test::max_abs_err(y.to(torch::kFloat64), want_back), 1e-5 * want_back.abs().max().item<double>());
    if (nn::fast_conv_available())
      EXPECT_TRUE(torch::equal(nn::fast_tokens_to_conv1x1(h, back.weight, back.bias, r), y)) << "fast path taken";
    // the fallbacks: the same figures through libtorch's conv
    nn::set_fast_linear(false);
    EXPECT_FALSE(nn::fast_conv1x1_to_tokens(x, c.weight, c.bias).defined());
    const double tol = 1e-5 * want.abs().max().item<double>();
    EXPECT_LT(test::max_abs_err(c.forward_to_tokens(x).to(torch::kFloat64), want), tol);
    EXPECT_LT(test::max_abs_err(back.forward_from_tokens(h, r, c10::MemoryFormat::Contiguous).to(torch::kFloat64),
                                want_back),
              1e-5 * want_back.abs().max().item<double>());
    nn::set_fast_linear(true);
    auto cl = x.contiguous(c10::MemoryFormat::ChannelsLast);
    if (k.H * k.W > 1 && k.C > 1) EXPECT_FALSE(nn::fast_conv1x1_to_tokens(cl, c.weight, c.bias).defined());
    EXPECT_LT(test::max_abs_err(c.forward_to_tokens(cl).to(torch::kFloat64), want), tol);
  }
  // a LoRA adapter on the conv: its term is added, so the fused path steps aside
  nn::Conv c(2, 8, 8, 1);
  c.lora = std::make_shared<nn::LoraAdapter>(8, 8, 2, 2.0, 1);
  for (auto& p : c.lora->parameters()) torch::nn::init::normal_(p);
  auto x = torch::randn({1, 8, 3, 3});
  EXPECT_TRUE(torch::allclose(c.forward_to_tokens(x), tokens_of(c.forward(x))));
  EXPECT_FALSE(torch::allclose(c.forward_to_tokens(x), tokens_of(torch::conv2d(x, c.weight, c.bias)), 1e-3, 1e-3));
}

// A residual added inside the matmul (a transformer block's skip connection):
// the float64 linear plus the residual; Linear::forward(x, r) takes that path,
// and steps aside (the sum done after) for a residual it cannot take as is.
TEST(FastLinear, ResidualAddedAsTheKernelStores) {
  torch::manual_seed(3);
  torch::NoGradGuard ng;
  nn::Linear l(40, 24);
  auto x = torch::randn({2, 9, 40}), r = torch::randn({2, 9, 24});
  const auto want = linear64(x, l.weight, l.bias) + r.to(torch::kFloat64);
  auto y = l.forward(x, r);
  EXPECT_LT(test::max_abs_err(y.to(torch::kFloat64), want), 1e-5 * want.abs().max().item<double>());
  if (nn::fast_conv_available()) {
    auto f = nn::fast_linear(x, l.weight, l.bias, r);
    ASSERT_TRUE(f.defined());
    EXPECT_TRUE(torch::equal(f, y)) << "Linear::forward(x, r) takes the fused path";
  }
  auto rt = torch::randn({2, 24, 9}).transpose(1, 2);  // not contiguous: added after the matmul
  EXPECT_FALSE(nn::fast_linear(x, l.weight, l.bias, rt).defined());
  const auto want_t = linear64(x, l.weight, l.bias) + rt.to(torch::kFloat64);
  EXPECT_LT(test::max_abs_err(l.forward(x, rt).to(torch::kFloat64), want_t), 1e-5 * want_t.abs().max().item<double>());
  EXPECT_FALSE(nn::fast_linear(x, l.weight, l.bias, torch::randn({2, 9, 23})).defined()) << "another shape";
}

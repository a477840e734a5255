// The oneDNN training convolutions (train_conv.h): output and the three
// gradients against a float64 libtorch conv (an independent computation),
// in float32 and under bf16 autocast, and where they must step aside.
#include <ATen/autocast_mode.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "ldm/modules/fast_conv.h"
#include "ldm/modules/layers.h"
#include "ldm/util/autocast.h"
#include "tests/testing.h"

using namespace ldm;

namespace {
struct AtenConv {  // LDM_CONV=aten in this scope
  AtenConv() : prev(nn::fast_conv()) { nn::set_fast_conv(nn::FastConv::Aten); }
  ~AtenConv() { nn::set_fast_conv(prev); }
  nn::FastConv prev;
};
bool ran_ours(const torch::Tensor& y) {
  return y.grad_fn() && y.grad_fn()->name().find("TrainConvFn") != std::string::npos;
}

struct Grads {
  torch::Tensor y, dx, dw, db;
};
// y and the gradients of sum(y * r) w.r.t. x, the weight and the bias
Grads run(nn::Conv& c, const torch::Tensor& x0, const torch::Tensor& r, bool bf16) {
  auto x = x0.detach().requires_grad_(true);
  c.zero_grad(/*set_to_none=*/true);
  torch::Tensor y;
  {
    Autocast ac(bf16 ? "bf16" : "32", torch::kCPU);
    y = c.forward(x);
  }
  (y.to(torch::kFloat64) * r).sum().backward();
  return {y, x.grad(), c.weight.grad(), c.bias.defined() ? c.bias.grad() : torch::Tensor()};
}

double rel(const torch::Tensor& a, const torch::Tensor& ref) {
  return ((a.to(torch::kFloat64) - ref).abs().max() / ref.abs().max()).item<double>();
}
}  // namespace

TEST(TrainConv, MatchesFloat64ConvWithGradients) {
  if (!nn::fast_conv_available()) GTEST_SKIP() << "built without oneDNN headers: libtorch's conv everywhere";
  torch::manual_seed(0);
  struct Case {
    int64_t in, out, k, stride, pad, n, hw;
    bool bias;
  };
  // the UNet's 3x3, a strided downsample, 1x1 skips (their gradients as
  // matmuls) with and without bias, odd channel counts
  const std::vector<Case> cases = {{32, 32, 3, 1, 1, 4, 8, true},
                                   {16, 24, 3, 2, 1, 3, 9, true},
                                   {24, 8, 1, 1, 0, 2, 5, false},
                                   {16, 40, 1, 1, 0, 3, 4, true},
                                   {5, 7, 3, 1, 1, 2, 6, true}};
  for (bool bf16 : {false, true}) {
    for (const auto& k : cases) {
      SCOPED_TRACE("bf16 " + std::to_string(bf16) + " case in " + std::to_string(k.in) + " out " +
                   std::to_string(k.out) + " k " + std::to_string(k.k) + " stride " + std::to_string(k.stride));
      nn::Conv c(2, k.in, k.out, k.k, k.stride, k.pad, k.bias);
      auto x = torch::randn({k.n, k.in, k.hw, k.hw}).contiguous(at::MemoryFormat::ChannelsLast);
      const int64_t oh = (k.hw + 2 * k.pad - k.k) / k.stride + 1;
      auto r = torch::randn({k.n, k.out, oh, oh}, torch::kFloat64);
      const Grads g = run(c, x, r, bf16);
      ASSERT_TRUE(ran_ours(g.y)) << g.y.grad_fn()->name();
      EXPECT_EQ(g.y.scalar_type(), bf16 ? torch::kBFloat16 : torch::kFloat32);
      EXPECT_TRUE(g.y.is_contiguous(at::MemoryFormat::ChannelsLast));
      EXPECT_EQ(g.dx.scalar_type(), torch::kFloat32);  // the input's dtype, as libtorch's conv gives it
      EXPECT_EQ(g.dw.scalar_type(), torch::kFloat32);
      EXPECT_TRUE(g.dw.is_contiguous());

      // float64 reference: the same weights, libtorch's conv, NCHW
      auto xd = x.to(torch::kFloat64).contiguous().requires_grad_(true);
      auto wd = c.weight.detach().to(torch::kFloat64).requires_grad_(true);
      auto bd = k.bias ? c.bias.detach().to(torch::kFloat64).requires_grad_(true) : torch::Tensor();
      auto yd = torch::conv2d(xd, wd, bd, {k.stride, k.stride}, {k.pad, k.pad});
      (yd * r).sum().backward();
      // float32: accumulation order only; bf16: 8-bit mantissas of x and w (and of dy)
      const double tol = bf16 ? 2e-2 : 1e-5;
      EXPECT_LT(rel(g.y, yd), tol);
      EXPECT_LT(rel(g.dx, xd.grad()), tol);
      EXPECT_LT(rel(g.dw, wd.grad()), tol);
      if (k.bias) EXPECT_LT(rel(g.db, bd.grad()), tol);
    }
  }
}

TEST(TrainConv, MatchesLibtorchsBf16ConvAtTheUNetsShape) {
  if (!nn::fast_conv_available()) GTEST_SKIP() << "built without oneDNN headers: libtorch's conv everywhere";
  torch::manual_seed(1);
  nn::Conv c(2, 64, 64, 3, 1, 1, true);
  auto x = torch::randn({8, 64, 8, 8}).contiguous(at::MemoryFormat::ChannelsLast);
  auto r = torch::randn({8, 64, 8, 8}, torch::kFloat64);
  const Grads ours = run(c, x, r, true);
  ASSERT_TRUE(ran_ours(ours.y));
  Grads theirs;
  {
    AtenConv aten;
    theirs = run(c, x, r, true);
    ASSERT_FALSE(ran_ours(theirs.y));
  }
  // the same bf16 products with float32 sums: ours keeps the bias and the
  // weight gradient in float32 where libtorch rounds them to bf16
  EXPECT_LT(rel(ours.y, theirs.y.to(torch::kFloat64)), 1e-2);
  EXPECT_LT(rel(ours.dx, theirs.dx.to(torch::kFloat64)), 1e-2);
  EXPECT_LT(rel(ours.dw, theirs.dw.to(torch::kFloat64)), 1e-2);
  EXPECT_LT(rel(ours.db, theirs.db.to(torch::kFloat64)), 1e-2);
}

TEST(TrainConv, StepsAsideWhereItDoesNotApply) {
  torch::manual_seed(2);
  nn::Conv c(2, 8, 8, 3, 1, 1, true);
  auto cl = torch::randn({2, 8, 6, 6}).contiguous(at::MemoryFormat::ChannelsLast);
  auto nchw = torch::randn({2, 8, 6, 6});
  {  // NCHW maps (networks that do not train channels-last)
    auto y = c.forward(nchw.requires_grad_(true));
    EXPECT_FALSE(ran_ours(y));
  }
  {  // no gradient wanted
    torch::NoGradGuard ng;
    EXPECT_FALSE(ran_ours(c.forward(cl)));
  }
  {  // float64
    nn::Conv d(2, 8, 8, 3, 1, 1, true);
    d.to(torch::kFloat64);
    EXPECT_FALSE(ran_ours(d.forward(cl.to(torch::kFloat64).requires_grad_(true))));
  }
  {  // LDM_CONV=aten
    AtenConv aten;
    EXPECT_FALSE(ran_ours(c.forward(cl.detach().requires_grad_(true))));
  }
}

// The fused GroupNorm (+ scale/shift, + SiLU) kernel against float64 libtorch
// ops: output and the gradients of x, weight, bias, scale and shift, in bf16
// and float32, for the fashion UNet's shapes, odd spatial sizes (the vector
// loops' tails), groups larger than the kernel's summation block, and a 3-d
// input.
#include <torch/torch.h>

#include <array>

#include "ldm/modules/group_norm_fused.h"
#include "ldm/modules/layers.h"
#include "tests/testing.h"

using namespace ldm;

namespace {
// max over elements of |got - want| / (rel |want| + abs)
double excess(const torch::Tensor& got, const torch::Tensor& want, double rel, double abs) {
  auto w = want.to(torch::kFloat64);
  return ((got.to(torch::kFloat64) - w).abs() / (w.abs() * rel + abs)).max().item<double>();
}
bool kernel_missing() { return !group_norm_fused_applies(torch::zeros({1, 1})); }

struct Case {
  std::vector<int64_t> shape;
  int64_t groups;
};
const std::vector<Case> kCases = {{{4, 32, 16, 16}, 32}, {{3, 64, 4, 4}, 32}, {{2, 12, 5, 3}, 4},
                                  {{1, 8, 70, 70}, 2},   {{2, 16, 9}, 4},
                                  {{1, 48, 20, 20}, 4}};  // 16-lane kernels over more than one block of rows

// One case in one dtype, with or without the SiLU and the per-sample scale/shift.
// channels_last: x stored so (4-d cases), which takes the channels-last kernels.
void check(const Case& cs, torch::ScalarType dt, bool silu, bool scale_shift, torch::Generator& gen,
           bool channels_last = false) {
  const int64_t n = cs.shape[0], c = cs.shape[1];
  const bool bf16 = dt == torch::kBFloat16;
  auto x = (torch::randn(cs.shape, gen) * 3 + 1).to(dt);
  if (channels_last) x = x.contiguous(at::MemoryFormat::ChannelsLast);
  x.requires_grad_();
  auto w = (torch::randn({c}, gen) + 1).requires_grad_(), b = torch::randn({c}, gen).requires_grad_();
  torch::Tensor s, t;
  if (scale_shift) {
    s = (torch::randn({n, c, 1}, gen) * 0.5).to(dt).requires_grad_();
    t = torch::randn({n, c, 1}, gen).to(dt).requires_grad_();
  }
  auto up = torch::randn(cs.shape, gen).to(dt);
  auto y = group_norm_fused(x, cs.groups, w, b, 1e-5, silu, s, t);
  y.backward(up);

  auto f64 = [](const torch::Tensor& v) { return v.detach().to(torch::kFloat64).requires_grad_(); };
  auto x64 = f64(x), w64 = f64(w), b64 = f64(b);
  auto y64 = torch::group_norm(x64, cs.groups, w64, b64, 1e-5);
  torch::Tensor s64, t64;
  if (scale_shift) {
    s64 = f64(s), t64 = f64(t);
    auto bshape = std::vector<int64_t>(cs.shape.size(), 1);
    bshape[0] = n, bshape[1] = c;
    y64 = y64 * (1 + s64.view(bshape)) + t64.view(bshape);
  }
  if (silu) y64 = torch::silu(y64);
  y64.backward(up.to(torch::kFloat64));

  const std::string what = c10::str(cs.shape, " groups ", cs.groups, silu ? " +silu" : "",
                                    scale_shift ? " +scale/shift" : "", bf16 ? " bf16" : " float32",
                                    channels_last ? " channels-last" : "");
  EXPECT_EQ(y.scalar_type(), dt) << what;
  if (channels_last) {  // the layout carries through, both ways
    EXPECT_TRUE(y.is_contiguous(at::MemoryFormat::ChannelsLast)) << what;
    EXPECT_TRUE(x.grad().is_contiguous(at::MemoryFormat::ChannelsLast)) << what;
  }
  EXPECT_EQ(x.grad().scalar_type(), dt) << what;
  // bf16 outputs: one rounding (2^-8 relative) over float32 arithmetic; float32: sums of up to 20k terms
  const double rel = bf16 ? 4e-3 : 2e-5;
  EXPECT_LT(excess(y, y64, rel, bf16 ? 1e-5 : 1e-6), 1.0) << what;
  const double dx_scale = x64.grad().abs().max().item<double>();
  EXPECT_LT(excess(x.grad(), x64.grad(), rel, (bf16 ? 1e-4 : 1e-5) * dx_scale), 1.0) << "dx " << what;
  // float32 sums over n * hw terms
  const double n_terms = double(x.numel()) / double(c);
  EXPECT_LT(excess(w.grad(), w64.grad(), 1e-4, 1e-6 * n_terms), 1.0) << "dw " << what;
  EXPECT_LT(excess(b.grad(), b64.grad(), 1e-4, 1e-6 * n_terms), 1.0) << "db " << what;
  if (scale_shift) {
    EXPECT_EQ(s.grad().sizes(), s.sizes()) << what;
    EXPECT_EQ(s.grad().scalar_type(), dt) << what;
    const double per_sample = n_terms / double(n);
    EXPECT_LT(excess(s.grad(), s64.grad(), rel, 1e-6 * per_sample), 1.0) << "dscale " << what;
    EXPECT_LT(excess(t.grad(), t64.grad(), rel, 1e-6 * per_sample), 1.0) << "dshift " << what;
  }
  torch::NoGradGuard ng;  // the inference path computes the same
  EXPECT_TRUE(torch::equal(group_norm_fused(x.detach(), cs.groups, w, b, 1e-5, silu, s, t), y.detach())) << what;
}
}  // namespace

TEST(GroupNormFused, MatchesFloat64WithGradients) {
  if (kernel_missing()) GTEST_SKIP() << "this CPU lacks AVX2/FMA";
  auto gen = torch::make_generator<at::CPUGeneratorImpl>(5);
  for (const auto& cs : kCases)
    for (auto dt : {torch::kBFloat16, torch::kFloat32})
      for (bool silu : {false, true}) check(cs, dt, silu, false, gen);
}

// The reference ResBlock's use_scale_shift_norm: the norm, times (1 + scale),
// plus shift, per sample and channel, then the SiLU.
TEST(GroupNormFused, ScaleShiftMatchesFloat64WithGradients) {
  if (kernel_missing()) GTEST_SKIP() << "this CPU lacks AVX2/FMA";
  auto gen = torch::make_generator<at::CPUGeneratorImpl>(7);
  for (const auto& cs : kCases)
    for (auto dt : {torch::kBFloat16, torch::kFloat32}) check(cs, dt, true, true, gen);
}

// Channels-last maps (training's layout for oneDNN's convolutions): the same
// results by the per-sample kernels that run along the channels, with channel
// counts that leave vector tails (12) and groups of one channel (32 of 32).
TEST(GroupNormFused, ChannelsLastMatchesFloat64WithGradients) {
  if (kernel_missing()) GTEST_SKIP() << "this CPU lacks AVX2/FMA";
  auto gen = torch::make_generator<at::CPUGeneratorImpl>(8);
  for (const auto& cs : kCases) {
    if (cs.shape.size() != 4) continue;
    for (auto dt : {torch::kBFloat16, torch::kFloat32})
      for (int v = 0; v < 3; ++v) check(cs, dt, v > 0, v == 2, gen, true);
  }
}

// GroupNorm's module paths on bf16 inputs (autocast, bf16 inference) give what
// the float32 path gives, rounded once; with scale/shift, what libtorch's ops
// give in float32.
TEST(GroupNormFused, ModulePathAgreesWithFloat32Path) {
  if (kernel_missing()) GTEST_SKIP() << "this CPU lacks AVX2/FMA";
  auto gen = torch::make_generator<at::CPUGeneratorImpl>(6);
  nn::GroupNorm gn(32, 64, 1e-6);
  {
    torch::NoGradGuard ng;
    gn.weight.copy_(torch::randn({64}, gen) + 1);
    gn.bias.copy_(torch::randn({64}, gen));
  }
  auto x = torch::randn({2, 64, 8, 8}, gen).to(torch::kBFloat16).to(torch::kFloat32);  // exact in bf16
  auto want = torch::silu(torch::group_norm(x, 32, gn.weight, gn.bias, 1e-6));
  EXPECT_LT(excess(gn.forward_silu(x.to(torch::kBFloat16)), want, 4e-3, 1e-5), 1.0);
  EXPECT_EQ(gn.forward_silu(x.to(torch::kBFloat16)).scalar_type(), torch::kBFloat16);
  EXPECT_LT(excess(gn.forward_silu(x), want, 1e-5, 1e-6), 1.0);
  auto s = torch::randn({2, 64, 1, 1}, gen), t = torch::randn({2, 64, 1, 1}, gen);
  auto want_ss = torch::silu(torch::group_norm(x, 32, gn.weight, gn.bias, 1e-6) * (1 + s) + t);
  EXPECT_LT(excess(gn.forward_scale_shift_silu(x, s, t), want_ss, 1e-5, 1e-6), 1.0);
  EXPECT_THROW(group_norm_fused(x, 3, gn.weight, gn.bias, 1e-6, true), c10::Error);  // 64 channels, 3 groups
  EXPECT_THROW(group_norm_fused(x, 32, gn.weight, gn.bias, 1e-6, true, s), c10::Error);  // scale without shift
  EXPECT_THROW(group_norm_fused(x, 32, gn.weight, gn.bias, 1e-6, true, s[0], t[0]), c10::Error);  // one sample's
}

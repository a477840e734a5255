// The oneDNN inference convolutions against libtorch's conv2d (an independent
// computation), and when they must step aside.
#include <ATen/autocast_mode.h>

#include <cstring>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "ldm/modules/fast_conv.h"
#include "ldm/modules/layers.h"
#include "tests/testing.h"

using namespace ldm;

namespace {
struct ModeScope {
  explicit ModeScope(nn::FastConv m) : prev(nn::fast_conv()) { nn::set_fast_conv(m); }
  ~ModeScope() { nn::set_fast_conv(prev); }
  nn::FastConv prev;
};
torch::Tensor aten_conv(nn::Conv& c, const torch::Tensor& x) {
  return torch::conv2d(x, c.weight, c.bias, c.stride, {c.padding, c.padding});
}
}  // namespace

TEST(FastConv, MatchesLibtorchOnEveryKernelKind) {
  torch::manual_seed(0);
  torch::NoGradGuard ng;
  struct Case {
    int64_t in, out, k, stride, pad, n, hw;
    bool bias;
  };
  // 3x3 on large maps (Winograd from the first call: shape alone decides), strided 3x3
  // (direct), 1x1 without bias, odd sizes
  const std::vector<Case> cases = {{128, 136, 3, 1, 1, 1, 40, true}, {16, 24, 3, 1, 1, 1, 128, true},
                                   {32, 32, 3, 1, 1, 2, 24, true},
                                   {8, 16, 3, 2, 1, 2, 17, true},    {24, 8, 1, 1, 0, 3, 9, false},
                                   {5, 7, 3, 1, 1, 1, 13, true}};
  for (auto mode : {nn::FastConv::Direct, nn::FastConv::Auto}) {
    ModeScope ms(mode);
    for (const auto& k : cases) {
      nn::Conv c(2, k.in, k.out, k.k, k.stride, k.pad, k.bias);
      auto x = torch::randn({k.n, k.in, k.hw, k.hw});
      auto ref = aten_conv(c, x);
      for (int call = 0; call < 4; ++call) {  // repeated calls reuse the cached primitive
        auto y = c.forward(x);
        ASSERT_EQ(y.sizes(), ref.sizes());
        EXPECT_LT(test::max_abs_err(y, ref), 1e-5 * ref.abs().max().item<double>())
            << "mode " << static_cast<int>(mode) << " in " << k.in << " k " << k.k << " call " << call;
      }
      // Auto sends 3x3 convs of maps >= 1024 pixels to Winograd (ours; oneDNN's
      // with LDM_WINO=onednn on AVX-512), other maps > 2048 pixels to libtorch's conv
      const bool aten_shape = mode == nn::FastConv::Auto && k.n * k.hw * k.hw > 2048 &&
                              !(k.k == 3 && k.stride == 1 && k.n * k.hw * k.hw >= 1024 && std::min(k.in, k.out) >= 128);
      if (nn::fast_conv_available() && !aten_shape)
        EXPECT_GT(nn::fast_conv_cache_bytes(c.fast), 0u) << "fast path not taken: mode " << static_cast<int>(mode)
                                                          << " in " << k.in << " hw " << k.hw;
      // once settled the result repeats bit for bit
      EXPECT_TRUE(torch::equal(c.forward(x), c.forward(x)));
    }
  }
}

TEST(FastConv, FollowsInPlaceWeightChanges) {
  ModeScope ms(nn::FastConv::Auto);
  torch::manual_seed(1);
  nn::Conv c(2, 8, 8, 3, 1, 1);
  auto x = torch::randn({1, 8, 40, 40});
  torch::NoGradGuard ng;
  for (int i = 0; i < 3; ++i) c.forward(x);
  c.weight.mul_(-2.0);  // an optimiser step or an EMA swap: same storage, new version
  auto ref = aten_conv(c, x);
  EXPECT_LT(test::max_abs_err(c.forward(x), ref), 1e-5 * ref.abs().max().item<double>());
  c.weight.set_data(torch::randn_like(c.weight));  // new storage
  ref = aten_conv(c, x);
  EXPECT_LT(test::max_abs_err(c.forward(x), ref), 1e-5 * ref.abs().max().item<double>());
}

TEST(FastConv, StepsAsideForAutogradAutocastAndOtherDtypes) {
  ModeScope ms(nn::FastConv::Auto);
  torch::manual_seed(2);
  nn::Conv c(2, 4, 6, 3, 1, 1);
  auto x = torch::randn({2, 4, 8, 8});
  std::shared_ptr<nn::FastConvCache> cache;
  // weights that need gradients with grad mode on: libtorch's differentiable conv
  EXPECT_FALSE(nn::fast_conv2d(x, c.weight, c.bias, c.stride, c.padding, cache).defined());
  auto y = c.forward(x);
  y.sum().backward();
  ASSERT_TRUE(c.weight.grad().defined());
  EXPECT_GT(c.weight.grad().abs().sum().item<double>(), 0.0);
  torch::NoGradGuard ng;
  EXPECT_EQ(nn::fast_conv2d(x, c.weight, c.bias, c.stride, c.padding, cache).defined(), nn::fast_conv_available());
  {
    at::autocast::set_cpu_enabled(true);
    auto r = nn::fast_conv2d(x, c.weight, c.bias, c.stride, c.padding, cache);
    at::autocast::set_cpu_enabled(false);
    EXPECT_FALSE(r.defined());
  }
  auto xb = x.to(torch::kBFloat16);
  auto wb = c.weight.to(torch::kBFloat16);
  auto bb = c.bias.to(torch::kBFloat16);
  // bf16 where oneDNN has AMX kernels: libtorch's conv in float32 on the same bf16 values, within bf16 rounding
  auto rb = nn::fast_conv2d(xb, wb, bb, c.stride, c.padding, cache);
  EXPECT_EQ(rb.defined(), nn::fast_conv_bf16_available());
  if (rb.defined()) {
    auto want = torch::conv2d(xb.to(torch::kFloat32), wb.to(torch::kFloat32), bb.to(torch::kFloat32), c.stride,
                              {c.padding, c.padding});
    EXPECT_EQ(rb.scalar_type(), torch::kBFloat16);
    EXPECT_LT(test::max_abs_err(rb.to(torch::kFloat32), want), 1e-2 * want.abs().max().item<double>());
    at::autocast::set_cpu_enabled(true);  // bf16 autocast (CPU's default dtype) casts nothing here
    auto r = nn::fast_conv2d(xb, wb, bb, c.stride, c.padding, cache);
    auto r32 = nn::fast_conv2d(x, c.weight, c.bias, c.stride, c.padding, cache);
    at::autocast::set_cpu_enabled(false);
    EXPECT_TRUE(r.defined());
    EXPECT_FALSE(r32.defined()) << "float32 input under autocast: libtorch's op casts it";
  }
  EXPECT_FALSE(nn::fast_conv2d(x.to(torch::kFloat64), c.weight.to(torch::kFloat64), c.bias.to(torch::kFloat64), c.stride,
                               c.padding, cache)
                   .defined());
  {
    nn::FastConvOff off;  // gradient checkpointing's no-grad forward
    EXPECT_FALSE(nn::fast_conv2d(x, c.weight, c.bias, c.stride, c.padding, cache).defined());
  }
  {
    ModeScope off(nn::FastConv::Aten);
    EXPECT_FALSE(nn::fast_conv2d(x, c.weight, c.bias, c.stride, c.padding, cache).defined());
  }
}

TEST(FastConv, PackedHookSeesEachWeightOnceAndReleaseDropsThePacking) {
  if (!nn::fast_conv_available()) GTEST_SKIP() << "built without oneDNN headers";
  ModeScope ms(nn::FastConv::Direct);
  int calls = 0;
  nn::set_fast_conv_packed_hook([&](const torch::Tensor& w) {
    EXPECT_EQ(w.dim(), 4);
    ++calls;
    return false;
  });
  auto holder = std::make_shared<nn::Holder>();
  auto a = holder->add("a", std::make_shared<nn::Conv>(2, 3, 5, 3, 1, 1));
  auto b = holder->add("b", std::make_shared<nn::Conv>(2, 5, 2, 1, 1, 0));
  torch::NoGradGuard ng;
  auto x = torch::randn({1, 3, 10, 10});
  for (int i = 0; i < 3; ++i) b->forward(a->forward(x));
  nn::set_fast_conv_packed_hook(nullptr);
  EXPECT_EQ(calls, 2);
  EXPECT_GT(nn::fast_conv_cache_bytes(a->fast), 0u);
  nn::release_fast_conv(*holder);
  EXPECT_EQ(nn::fast_conv_cache_bytes(a->fast) + nn::fast_conv_cache_bytes(b->fast), 0u);
}

// A hook that drops the plain values (bf16 weights converted at load): the
// packed copy serves the same shape, packs a new one, and is written back into
// the weight before libtorch's conv reads it.
TEST(FastConv, DroppedPlainWeightsComeFromThePackedCopy) {
  if (!nn::fast_conv_bf16_available()) GTEST_SKIP() << "no AMX here: bf16 convolutions stay on libtorch's conv";
  ModeScope ms(nn::FastConv::Auto);
  torch::manual_seed(3);
  nn::Conv c(2, 16, 32, 3, 1, 1);
  c.to(torch::kBFloat16);
  torch::NoGradGuard ng;
  const auto original = c.weight.clone();
  nn::set_fast_conv_packed_hook([&](const torch::Tensor& w) {
    std::memset(w.data_ptr(), 0xff, w.nbytes());  // NaNs: the values are gone (no version bump, as madvise)
    return true;
  });
  auto x = torch::randn({2, 16, 12, 12}).to(torch::kBFloat16), x1 = x.narrow(0, 0, 1).contiguous();
  auto first = c.forward(x);
  nn::set_fast_conv_packed_hook(nullptr);
  auto ref = [&](const torch::Tensor& in) {
    return torch::conv2d(in.to(torch::kFloat32), original.to(torch::kFloat32), c.bias.to(torch::kFloat32), 1, 1);
  };
  EXPECT_TRUE(c.weight.isnan().all().item<bool>());
  EXPECT_TRUE(torch::equal(c.forward(x), first));
  auto one = c.forward(x1);  // a new shape: packed from the packed copy
  EXPECT_LT(test::max_abs_err(one.to(torch::kFloat32), ref(x1)), 1e-2 * ref(x1).abs().max().item<double>());
  {
    ModeScope aten(nn::FastConv::Aten);  // libtorch's conv reads the weight: written back first
    auto y = c.forward(x);
    EXPECT_TRUE(torch::equal(c.weight, original));
    EXPECT_LT(test::max_abs_err(y.to(torch::kFloat32), ref(x)), 1e-2 * ref(x).abs().max().item<double>());
  }
}

// A Winograd layer's plain weights are handed to the hook once its transformed
// weights replace them: after the second call with ours (it transforms per call
// until then), the first with oneDNN's (LDM_WINO=onednn), never twice.
TEST(FastConv, WinogradHookOnceTheTransformedWeightsAreKept) {
  if (!nn::fast_conv_available()) GTEST_SKIP() << "built without oneDNN headers";
  ModeScope ms(nn::FastConv::Auto);
  int calls = 0;
  nn::set_fast_conv_packed_hook([&](const torch::Tensor&) { ++calls; return false; });
  nn::Conv c(2, 128, 128, 3, 1, 1);
  torch::NoGradGuard ng;
  auto x = torch::randn({1, 128, 40, 40});
  auto first = c.forward(x);
  EXPECT_LE(calls, 1);
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(torch::equal(c.forward(x), first));
  nn::set_fast_conv_packed_hook(nullptr);
  EXPECT_EQ(calls, 1);
  EXPECT_GT(nn::fast_conv_cache_bytes(c.fast), 0u);
  auto ref = aten_conv(c, x);
  EXPECT_LT(test::max_abs_err(first, ref), 3e-5 * ref.abs().max().item<double>());
}

// Above 640x640 channels a Winograd layer transforms its weights on every call
// and keeps nothing: no packed or transformed copy, its plain weights never
// handed to the hook (they are read again next call), the pixels the same.
TEST(FastConv, WideWinogradLayersKeepNothing) {
  if (!nn::fast_conv_available()) GTEST_SKIP() << "built without oneDNN headers";
  ModeScope ms(nn::FastConv::Auto);
  int calls = 0;
  nn::set_fast_conv_packed_hook([&](const torch::Tensor&) { ++calls; return false; });
  nn::Conv c(2, 640, 648, 3, 1, 1);
  torch::NoGradGuard ng;
  auto x = torch::randn({1, 640, 32, 32});  // 1024 pixels: Winograd's floor, inside the packed direct range
  auto first = c.forward(x);
  for (int i = 0; i < 2; ++i) EXPECT_TRUE(torch::equal(c.forward(x), first));
  nn::set_fast_conv_packed_hook(nullptr);
  EXPECT_EQ(calls, 0);
  EXPECT_EQ(nn::fast_conv_cache_bytes(c.fast), 0u) << "a direct packing or kept Winograd weights";
  auto ref = aten_conv(c, x);
  EXPECT_LT(test::max_abs_err(first, ref), 3e-5 * ref.abs().max().item<double>());
}

// Our Winograd F(4x4, 3x3) convolution against libtorch's conv2d (an
// independent computation), its weight transform against G g G^T in double,
// and the first (weights transformed per call) against later (kept) calls.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <stdexcept>

#include "ldm/modules/winograd_conv.h"
#include "tests/testing.h"

using namespace ldm;

namespace {
double rel_err(const torch::Tensor& y, const torch::Tensor& ref) {
  return test::max_abs_err(y, ref) / ref.abs().max().item<double>();
}
}  // namespace

TEST(WinogradConv, WeightTransformIsGgGt) {
  torch::manual_seed(0);
  // Lavin & Gray's G for the points 0, 1, -1, 2, -2, inf
  auto g = torch::tensor({1.0 / 4, 0.0, 0.0, -1.0 / 6, -1.0 / 6, -1.0 / 6, -1.0 / 6, 1.0 / 6, -1.0 / 6, 1.0 / 24,
                          1.0 / 12, 1.0 / 6, 1.0 / 24, -1.0 / 12, 1.0 / 6, 0.0, 0.0, 1.0},
                         torch::kFloat64)
               .view({6, 3});
  // output channels in blocks of 16: one partial block, and full blocks with a partial one
  for (auto [co, ci] : {std::pair<int64_t, int64_t>{5, 3}, {37, 4}}) {
    auto w = torch::randn({co, ci, 3, 3});
    auto want = torch::matmul(torch::matmul(g, w.to(torch::kFloat64)), g.t());  // [Co, Ci, 6, 6]
    auto u = nn::winograd_weights(w);                                          // [36, Ci, Co]
    ASSERT_EQ(u.sizes(), (std::vector<int64_t>{36, ci, co}));
    auto got = u.to(torch::kFloat64).view({6, 6, ci, co}).permute({3, 2, 0, 1});
    EXPECT_LT(test::max_abs_err(got, want), 1e-6 * want.abs().max().item<double>()) << co << "x" << ci;
  }
}

TEST(WinogradConv, MatchesLibtorchConv) {
  torch::manual_seed(1);
  torch::NoGradGuard ng;
  struct Case {
    int64_t n, ci, co, h, w;
    bool bias;
    int64_t chunk_bytes;
  };
  // maps not a multiple of the 4x4 tile, 1x1 and 2x2 maps, channel counts past the
  // 64-channel blocks, maps wider than a 16-tile column group, chunks that split
  // the tiles (at least 256 a chunk: 25 tile rows as 15 + 10; 20 as 16 + 4 across
  // the two images)
  const std::vector<Case> cases = {{1, 16, 24, 32, 32, true, 8 << 20},  {2, 70, 33, 13, 7, true, 8 << 20},
                                   {3, 8, 8, 1, 1, false, 8 << 20},     {1, 20, 20, 2, 2, true, 8 << 20},
                                   {1, 16, 16, 100, 72, true, 1000},    {2, 16, 24, 40, 64, false, 1000},
                                   {1, 64, 64, 40, 40, false, 200000}};
  for (const auto& k : cases) {
    auto x = torch::randn({k.n, k.ci, k.h, k.w});
    auto w = torch::randn({k.co, k.ci, 3, 3}) / std::sqrt(9.0 * k.ci);
    auto b = k.bias ? torch::randn({k.co}) : torch::Tensor();
    auto ref = torch::conv2d(x, w, b, 1, 1);
    nn::WinogradConv3x3 conv(w, k.chunk_bytes);
    auto first = conv(x, b);
    EXPECT_FALSE(conv.cached());
    ASSERT_EQ(first.sizes(), ref.sizes());
    EXPECT_LT(rel_err(first, ref), 3e-5) << k.ci << "->" << k.co << " " << k.h << "x" << k.w;
    auto second = conv(x, b);
    EXPECT_TRUE(conv.cached());
    EXPECT_EQ(conv.bytes(), static_cast<size_t>(36 * k.ci * k.co * 4));
    // kept weights give the same pixels as weights made for the call
    EXPECT_TRUE(torch::equal(first, second)) << k.ci << "->" << k.co;
    EXPECT_TRUE(torch::equal(conv(x, b), second));
    // never kept: the weights transformed per call in blocks of output channels
    // (16 a block where chunk_bytes is 1000: 24 as 16 + 8), the same pixels again
    nn::WinogradConv3x3 streamed(w, k.chunk_bytes, /*keep=*/false);
    for (int call = 0; call < 2; ++call) EXPECT_TRUE(torch::equal(streamed(x, b), first)) << k.ci << "->" << k.co;
    EXPECT_FALSE(streamed.cached());
    EXPECT_EQ(streamed.bytes(), 0u);
  }
}

TEST(WinogradConv, BadInputIsAClearError) {
  EXPECT_THROW(nn::WinogradConv3x3(torch::randn({4, 4, 5, 5})), std::invalid_argument);
  EXPECT_THROW(nn::winograd_weights(torch::randn({4, 4, 3, 3}).to(torch::kFloat64)), std::invalid_argument);
  nn::WinogradConv3x3 conv(torch::randn({4, 6, 3, 3}));
  try {
    conv(torch::randn({1, 5, 8, 8}), {});
    FAIL() << "5 input channels accepted by a 6-channel conv";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("[N, 6, H, W]"), std::string::npos) << e.what();
  }
  EXPECT_THROW(conv(torch::randn({1, 6, 8, 8}), torch::randn({5})), std::invalid_argument);
}

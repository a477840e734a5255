#include "ldm/io/resize.h"

#include <cmath>

#include "ldm/error.h"
#include "tests/testing.h"

using namespace ldm;

namespace {
// PIL's Lanczos resample written out per output pixel in float64: every input
// pixel whose kernel argument is inside the (widened) support, weights
// normalised per axis; nothing shared with the library's code.
double kernel(double x) {
  const double pi = std::acos(-1.0);
  auto sinc = [&](double t) { return t == 0 ? 1.0 : std::sin(pi * t) / (pi * t); };
  return std::abs(x) < 3 ? sinc(x) * sinc(x / 3) : 0.0;
}
std::vector<double> axis(int64_t in, int64_t out, int64_t o) {
  const double s = double(in) / out, fs = std::max(1.0, s), c = (o + 0.5) * s;
  std::vector<double> w(in);
  double sum = 0;
  for (int64_t i = 0; i < in; ++i) {
    const double d = i + 0.5 - c;  // input pixel centre minus the mapped output centre
    w[i] = std::abs(d) < 3 * fs + 0.5 ? kernel(d / fs) : 0.0;  // PIL's window, rounded outward
    sum += w[i];
  }
  for (auto& v : w) v /= sum;
  return w;
}
torch::Tensor direct(const torch::Tensor& img, int64_t H, int64_t W) {
  auto a = img.to(torch::kFloat64).contiguous();
  const int64_t C = a.size(0), h = a.size(1), w = a.size(2);
  auto out = torch::zeros({C, H, W}, torch::kFloat64);
  auto A = a.accessor<double, 3>();
  auto O = out.accessor<double, 3>();
  for (int64_t y = 0; y < H; ++y) {
    auto wy = axis(h, H, y);
    for (int64_t x = 0; x < W; ++x) {
      auto wx = axis(w, W, x);
      for (int64_t c = 0; c < C; ++c) {
        double s = 0;
        for (int64_t i = 0; i < h; ++i)
          for (int64_t j = 0; j < w; ++j) s += wy[i] * wx[j] * A[c][i][j];
        O[c][y][x] = std::min(1.0, std::max(0.0, s));
      }
    }
  }
  return out.to(torch::kFloat32);
}
}  // namespace

TEST(Resize, LanczosEqualsTheDirectSum) {
  torch::manual_seed(0);
  auto img = torch::rand({3, 13, 17});
  for (auto [H, W] : {std::pair<int64_t, int64_t>{26, 34}, {40, 21}, {7, 9}, {5, 40}, {13, 17}}) {
    auto got = io::resize_lanczos(img, H, W);
    ASSERT_EQ(got.sizes(), (std::vector<int64_t>{3, H, W}));
    EXPECT_LT(test::max_abs_err(got, direct(img, H, W)), 2e-6) << H << "x" << W;
  }
}

TEST(Resize, LanczosProperties) {
  torch::manual_seed(1);
  auto img = torch::rand({2, 1, 16, 16});
  // the same size is the identity (the kernel is 0 at every non-zero integer)
  EXPECT_LT(test::max_abs_err(io::resize_lanczos(img, 16, 16), img), 1e-6);
  // a constant stays constant (rows sum to 1), batch and channels kept apart
  auto flat = torch::full({2, 3, 9, 11}, 0.25);
  flat[1].fill_(0.75);
  auto up = io::resize_lanczos(flat, 31, 23);
  EXPECT_LT(test::max_abs_err(up[0], torch::full({3, 31, 23}, 0.25)), 1e-6);
  EXPECT_LT(test::max_abs_err(up[1], torch::full({3, 31, 23}, 0.75)), 1e-6);
  auto rows = io::lanczos_weights(10, 37).sum(1);
  EXPECT_LT(test::max_abs_err(rows, torch::ones({37})), 1e-6);
  // shrinking low-passes (the kernel widens): a one-pixel checkerboard halves to grey
  auto checker = (torch::arange(32).view({1, 32}) + torch::arange(32).view({32, 1})).remainder(2).to(torch::kFloat32);
  auto half = io::resize_lanczos(checker.unsqueeze(0), 16, 16);
  EXPECT_LT(test::max_abs_err(half.slice(1, 3, 13).slice(2, 3, 13), torch::full({1, 10, 10}, 0.5)), 0.02);
  // and the output stays in [0, 1] where Lanczos overshoots (a step edge)
  auto step = torch::zeros({1, 8, 8});
  step.slice(2, 4, 8).fill_(1);
  auto s = io::resize_lanczos(step, 8, 29);
  EXPECT_GE(s.min().item<float>(), 0.0f);
  EXPECT_LE(s.max().item<float>(), 1.0f);
  EXPECT_THROW(io::resize_lanczos(torch::zeros({4, 4}), 8, 8), Error);
  EXPECT_THROW(io::lanczos_weights(0, 8), Error);
}

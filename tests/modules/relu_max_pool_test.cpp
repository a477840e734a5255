// relu_max_pool2x2 against libtorch's max_pool2d(relu(x), 2): values and the
// input's gradient equal bit for bit, on inputs full of ties (few distinct
// values, as convolutions of 8-bit images give), with NaN, odd sizes (floor
// mode) and a non-contiguous input.
#include <torch/torch.h>

#include "ldm/error.h"
#include "ldm/modules/relu_max_pool.h"
#include "tests/testing.h"

using namespace ldm;

namespace {
void expect_same_as_libtorch(const torch::Tensor& x0) {
  auto gen = torch::make_generator<at::CPUGeneratorImpl>(3);
  auto a = x0.clone().requires_grad_(), b = x0.clone().requires_grad_();
  auto want = torch::max_pool2d(torch::relu(a), 2);
  auto got = relu_max_pool2x2(b);
  ASSERT_EQ(got.sizes(), want.sizes());
  EXPECT_TRUE(torch::equal(got.isnan(), want.isnan()));
  EXPECT_TRUE(torch::equal(got.nan_to_num(-7), want.nan_to_num(-7)));
  auto g = torch::randn(want.sizes(), gen);
  want.backward(g);
  got.backward(g);
  EXPECT_TRUE(torch::equal(b.grad(), a.grad())) << "max |diff| " << (b.grad() - a.grad()).abs().max().item<float>();
}
}  // namespace

TEST(ReluMaxPool, EqualsLibtorchOnTies) {
  auto gen = torch::make_generator<at::CPUGeneratorImpl>(1);
  // 5 distinct values, negative and positive: most windows hold ties
  auto x = torch::randint(-2, 3, {4, 8, 28, 28}, gen).to(torch::kFloat32) * 0.5;
  expect_same_as_libtorch(x);
  EXPECT_GT(torch::max_pool2d(torch::relu(x), 2).gt(0).sum().item<int64_t>(), 1000);  // the case has positive maxima
}

TEST(ReluMaxPool, EqualsLibtorchOnOddSizesNanAndStrides) {
  auto gen = torch::make_generator<at::CPUGeneratorImpl>(2);
  expect_same_as_libtorch(torch::randn({2, 3, 7, 9}, gen));
  auto x = torch::randn({1, 2, 6, 6}, gen);
  x[0][0][0][1] = NAN;  // a NaN wins its window and takes its gradient, as libtorch's
  x[0][1][3][3] = NAN;
  expect_same_as_libtorch(x);
  expect_same_as_libtorch(torch::randn({3, 4, 10, 12}, gen).transpose(2, 3));
}

TEST(ReluMaxPool, RefusesWhatItDoesNotCompute) {
  for (auto x : {torch::zeros({2, 8, 8}), torch::zeros({1, 1, 8, 8}, torch::kFloat64), torch::zeros({1, 1, 1, 8})}) {
    try {
      relu_max_pool2x2(x);
      ADD_FAILURE() << "accepted " << x.sizes();
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("relu_max_pool2x2: expected"), std::string::npos) << e.what();
    }
  }
}

#include "ldm/modules/vqvae/quantize.h"

#include "tests/testing.h"

using namespace ldm;

TEST(VectorQuantizer2, NearestCodeStraightThroughAndLoss) {
  torch::manual_seed(3);
  VectorQuantizer2 vq(16, 4, 0.25, /*legacy=*/true, /*sane_index_shape=*/true);
  const auto& E = vq.embedding->weight;
  // z built from known codes plus small noise: the nearest code is the source
  auto want = torch::randint(0, 16, {2, 3, 5}, torch::kInt64);
  auto zc = E.detach().index_select(0, want.reshape({-1})).view({2, 3, 5, 4}).permute({0, 3, 1, 2});
  auto z = (zc + 1e-4 * torch::randn_like(zc)).clone().requires_grad_(true);
  auto o = vq.forward(z);
  EXPECT_TRUE(torch::equal(o.indices, want));
  EXPECT_TRUE(torch::allclose(o.z_q, zc, 0, 1e-6));
  // loss against an independent computation: (1 + beta) * mean((zq - z)^2) in value
  auto ref = 1.25 * (zc - z.detach()).pow(2).mean();
  EXPECT_NEAR(o.loss.item<double>(), ref.item<double>(), 1e-12);
  // straight-through: d sum(z_q) / dz = 1
  o.z_q.sum().backward();
  EXPECT_TRUE(torch::allclose(z.grad(), torch::ones_like(z)));
  // codebook lookup by indices reproduces z_q
  auto back = vq.get_codebook_entry(o.indices, {2, 3, 5, 4});
  EXPECT_TRUE(torch::allclose(back, zc, 0, 1e-7));
  EXPECT_GT(o.perplexity.item<double>(), 1.0);
}

TEST(VectorQuantizer2, LegacyWeighting) {
  VectorQuantizer2 a(8, 2, 0.5, true), b(8, 2, 0.5, false);
  {
    torch::NoGradGuard ng;
    b.embedding->weight.copy_(a.embedding->weight);
  }
  auto z = torch::randn({1, 2, 2, 2});
  auto la = a.forward(z).loss.item<double>(), lb = b.forward(z).loss.item<double>();
  EXPECT_NEAR(la, lb, 1e-9);  // in value both are (1 + beta) * mse; they differ only in gradients
  auto zz = torch::randn({1, 2, 2, 2}, torch::requires_grad());
  auto ga = torch::autograd::grad({a.forward(zz).loss}, {zz})[0];
  auto gb = torch::autograd::grad({b.forward(zz).loss}, {zz})[0];
  EXPECT_TRUE(torch::allclose(ga, gb / 0.5, 1e-5, 1e-6));  // commitment weight 1 vs beta
}

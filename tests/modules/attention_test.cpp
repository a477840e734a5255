// The inference attention kernels against the one-shot reference path. The
// chunked one (query rows under the thread's score budget, two reused
// buffers): each row's softmax is independent, so chunking must not change the
// numbers beyond GEMM rounding, for chunk sizes that do and do not divide the
// rows. The fused one (tiles and an online softmax): the same within float
// rounding, for tile edges that fall inside the rows and keys or not.
#include <torch/torch.h>
#include <torch/version.h>

#include "ldm/modules/attention.h"
#include "tests/testing.h"

using namespace ldm;

TEST(Attention, ChunkedEqualsOneShot) {
  torch::NoGradGuard ng;
  auto g = torch::make_generator<at::CPUGeneratorImpl>(3);
  const std::vector<std::array<int64_t, 4>> shapes = {{3, 1000, 700, 24}, {2, 4096, 77, 40}, {1, 5, 3, 8}};
  for (auto [B, N, M, d] : shapes) {
    auto q = torch::randn({B, N, d}, g), k = torch::randn({B, M, d}, g), v = torch::randn({B, M, d}, g);
    const double scale = 1.0 / std::sqrt(static_cast<double>(d));
    auto want = attention_plain(q, k, v, scale);
    for (int64_t budget : {kDefaultAttentionChunkElements, int64_t(1000), int64_t(1)}) {
      AttentionChunkScope scope(budget);
      auto got = attention_chunked(q, k, v, scale);
      EXPECT_LT((got - want).abs().max().item<double>(), 1e-5) << B << "x" << N << "x" << M << " budget " << budget;
    }
  }
}

TEST(Attention, FusedEqualsOneShot) {
  torch::NoGradGuard ng;
  if (!attention_fused_supports(torch::zeros({1, 1, 8}), torch::zeros({1, 1, 8}), torch::zeros({1, 1, 8})))
    GTEST_SKIP() << "this CPU has no AVX2/FMA: the fused kernel does not run here";
  auto g = torch::make_generator<at::CPUGeneratorImpl>(5);
  // [B, N, M, d]: the UNet's self- and cross-attention shapes, partial tiles
  // (N, M not multiples of 6, 48, 96 or 16), a key block boundary (M > 256),
  // the VAE's single 512-wide head, one key
  const std::vector<std::array<int64_t, 4>> shapes = {
      {2, 1024, 1024, 40}, {3, 1000, 77, 40}, {2, 97, 300, 64}, {1, 50, 17, 8}, {1, 130, 200, 512},
      {2, 7, 1, 16},       {1, 301, 513, 160}, {1, 40, 50, 24}, {1, 30, 33, 56}, {1, 20, 40, 120}};
  for (auto [B, N, M, d] : shapes) {
    for (double amp : {1.0, 8.0}) {  // amp 8: peaked softmaxes, where a missing max shift would overflow
      auto q = torch::randn({B, N, d}, g) * amp, k = torch::randn({B, M, d}, g), v = torch::randn({B, M, d}, g);
      const double scale = 1.0 / std::sqrt(static_cast<double>(d));
      auto want = attention_plain(q.to(torch::kFloat64), k.to(torch::kFloat64), v.to(torch::kFloat64), scale);
      auto got = attention_fused(q, k, v, scale);
      // as close to the float64 truth as the float32 one-shot path is (its
      // error grows with d and with peaked softmaxes), with a floor; the
      // AVX2 kernel too where the AVX-512 one ran above
      const double plain_err = (attention_plain(q, k, v, scale).to(torch::kFloat64) - want).abs().max().item<double>();
      for (const auto& t : {got, attention_fused(q, k, v, scale, /*widest=*/false)})
        EXPECT_LT((t.to(torch::kFloat64) - want).abs().max().item<double>(), std::max(2e-5, 4 * plain_err))
            << B << "x" << N << "x" << M << "x" << d << " amp " << amp << " (float32 one-shot: " << plain_err << ")";
#if TORCH_VERSION_MAJOR < 2  // torch 2 builds call scaled_dot_product_attention instead
      EXPECT_TRUE(torch::equal(attention(q, k, v, scale), got)) << "attention() takes the fused path for fp32";
#endif
    }
  }
  // NaN in a query row: that row is NaN (as the one-shot path), the others are not
  auto q = torch::randn({1, 20, 8}, g), k = torch::randn({1, 20, 8}, g), v = torch::randn({1, 20, 8}, g);
  q[0][3][2] = std::nan("");
  auto got = attention_fused(q, k, v, 0.3);
  EXPECT_TRUE(got[0][3].isnan().all().item<bool>());
  EXPECT_FALSE(got[0][4].isnan().any().item<bool>());
}

// The bf16 kernels (AMX where the CPU has it, AVX512-BF16) against float64
// attention on the same bf16-rounded inputs: closer than libtorch's bf16
// one-shot path (bf16 scores, softmax and output; measured 1.2-5x farther
// than ours), with a floor of one bf16 ulp of the output's range.
TEST(Attention, FusedBf16EqualsOneShot) {
  torch::NoGradGuard ng;
  auto b16 = [](const torch::Tensor& t) { return t.to(torch::kBFloat16); };
  if (!attention_fused_supports(b16(torch::zeros({1, 1, 8})), b16(torch::zeros({1, 1, 8})), b16(torch::zeros({1, 1, 8}))))
    GTEST_SKIP() << "this CPU has no AVX512-BF16: the bf16 fused kernel does not run here";
  auto g = torch::make_generator<at::CPUGeneratorImpl>(7);
  const std::vector<std::array<int64_t, 4>> shapes = {
      {2, 1024, 1024, 40}, {3, 1000, 77, 40}, {2, 97, 300, 64}, {1, 50, 17, 8}, {1, 130, 200, 512},
      {2, 7, 1, 16},       {1, 301, 513, 160}, {2, 64, 77, 80}};
  for (auto [B, N, M, d] : shapes) {
    for (double amp : {1.0, 8.0}) {
      auto q = b16(torch::randn({B, N, d}, g) * amp), k = b16(torch::randn({B, M, d}, g)), v = b16(torch::randn({B, M, d}, g));
      const double scale = 1.0 / std::sqrt(static_cast<double>(d));
      auto f64 = [](const torch::Tensor& t) { return t.to(torch::kFloat64); };
      auto want = attention_plain(f64(q), f64(k), f64(v), scale);
      auto got = attention_fused(q, k, v, scale);
      ASSERT_EQ(got.scalar_type(), torch::kBFloat16);
      ASSERT_EQ(got.sizes(), want.sizes());
      const double range = want.abs().max().item<double>();
      const double plain_err = (f64(attention_plain(q, k, v, scale)) - want).abs().max().item<double>();
      for (const auto& t : {got, attention_fused(q, k, v, scale, /*widest=*/false)}) {
        const double err = (f64(t) - want).abs().max().item<double>();
        EXPECT_LT(err, std::max(plain_err, range / 256))
            << B << "x" << N << "x" << M << "x" << d << " amp " << amp << " (bf16 one-shot: " << plain_err << ")";
      }
#if TORCH_VERSION_MAJOR < 2
      EXPECT_TRUE(torch::equal(attention(q, k, v, scale), got)) << "attention() takes the fused path for bf16";
#endif
    }
  }
  // NaN in a query row: that row is NaN, the others are not
  auto q = b16(torch::randn({1, 20, 8}, g)), k = b16(torch::randn({1, 20, 8}, g)), v = b16(torch::randn({1, 20, 8}, g));
  q[0][3][2] = std::nan("");
  auto got = attention_fused(q, k, v, 0.3);
  EXPECT_TRUE(got[0][3].isnan().all().item<bool>());
  EXPECT_FALSE(got[0][4].isnan().any().item<bool>());
}

// attention_heads reads and writes the heads in place of [B, N, h*d]: the same
// numbers, bit for bit, as the fused kernel on split heads merged afterwards
// (float32 and bf16 where they run; a padded key count; an input that is a
// transposed view), the gradient-tracking fallback as the plain path, and a
// clear error for a width the heads do not divide.
TEST(Attention, HeadsInPlaceEqualSplitAndMerge) {
  auto g = torch::make_generator<at::CPUGeneratorImpl>(11);
  auto split = [](const torch::Tensor& x, int64_t h) {
    const int64_t d = x.size(2) / h;
    return x.view({x.size(0), x.size(1), h, d}).permute({0, 2, 1, 3}).reshape({-1, x.size(1), d});
  };
  auto merge = [](const torch::Tensor& x, int64_t B) {
    return x.view({B, -1, x.size(1), x.size(2)}).permute({0, 2, 1, 3}).reshape({B, x.size(1), -1});
  };
  int checked = 0;
  for (auto dt : {torch::kFloat32, torch::kBFloat16}) {
    auto probe = torch::zeros({1, 1, 8}, dt);
    if (!attention_fused_supports(probe, probe, probe)) continue;
    torch::NoGradGuard ng;
    // [B, N, M, h, d]: SD's self- and cross-attention at 64x64 (8 heads of 40, 77 keys padded to 80), odd sizes
    for (auto [B, N, M, h, d] : std::vector<std::array<int64_t, 5>>{
             {2, 1024, 1024, 8, 40}, {2, 300, 77, 8, 40}, {1, 50, 17, 5, 16}, {3, 7, 33, 2, 64}}) {
      auto q = torch::randn({B, N, h * d}, g).to(dt), k = torch::randn({B, M, h * d}, g).to(dt);
      auto v = torch::randn({B, h * d, M}, g).to(dt).transpose(1, 2);  // a strided view, as a caller may pass
      const double scale = 1.0 / std::sqrt(static_cast<double>(d));
      auto want = merge(attention_fused(split(q, h), split(k, h), split(v.contiguous(), h), scale), B);
      auto got = attention_heads(q, k, v, h, scale);
      ASSERT_EQ(got.sizes(), q.sizes());
      EXPECT_TRUE(torch::equal(got, want)) << B << "x" << N << "x" << M << " heads " << h << "x" << d << " " << dt;
      ++checked;
    }
  }
  if (!checked) GTEST_SKIP() << "this CPU has no AVX2/FMA: the fused kernel does not run here";
  // with gradients: the split, plain attention and merge of the reference, and its gradient
  auto q = torch::randn({2, 10, 16}, g).requires_grad_();
  auto k = torch::randn({2, 12, 16}, g), v = torch::randn({2, 12, 16}, g);
  auto got = attention_heads(q, k, v, 2, 0.25);
  auto want = merge(attention_plain(split(q, 2), split(k, 2), split(v, 2), 0.25), 2);
  EXPECT_LT((got - want).abs().max().item<double>(), 1e-6);
  got.sum().backward();
  ASSERT_TRUE(q.grad().defined());
  EXPECT_GT(q.grad().abs().sum().item<double>(), 0.0);
  EXPECT_THROW(attention_heads(q.detach(), k, v, 3, 0.25), c10::Error);
}

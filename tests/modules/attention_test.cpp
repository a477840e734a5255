// The inference attention kernel (chunks of query rows under the thread's
// score budget, two reused buffers) against the one-shot reference path: each
// row's softmax is independent, so chunking must not change the numbers beyond
// GEMM rounding, for chunk sizes that do and do not divide the rows.
#include <torch/torch.h>

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
      auto got = attention(q, k, v, scale);
      EXPECT_LT((got - want).abs().max().item<double>(), 1e-5) << B << "x" << N << "x" << M << " budget " << budget;
    }
  }
}

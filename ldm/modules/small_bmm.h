// Batched matmul of many small matrices, with autograd. libtorch 1.13's CPU
// bmm (built without MKL, as Debian's) loops over the batch with a select and
// a BLAS call per matrix, about 2 us each; the fashion UNet's training
// attention (256 heads of 16 tokens) spent most of its time there.
#pragma once
#include <torch/torch.h>

namespace ldm {

// a [B, n, k] @ b [B, k, m] -> [B, n, m], differentiable in both.
torch::Tensor small_bmm(const torch::Tensor& a, const torch::Tensor& b);
// True where small_bmm beats torch::bmm: fp32 on the CPU, many matrices of
// at most kSmallBmmMaxWork multiply-adds each.
bool small_bmm_pays(const torch::Tensor& a, const torch::Tensor& b);
constexpr int64_t kSmallBmmMaxWork = 64 * 64 * 64;

}  // namespace ldm

// Inference linear layers through oneDNN's matmul.
//
// Why: libtorch 1.13 runs float32 `linear` on OpenBLAS, which on SD's shapes
// reaches 125-189 GFLOP/s on two Zen 4 cores where oneDNN's brgemm matmul
// reaches 179-206 on the same plain weights (the attention projections,
// 8192x320 by 320x320, gain most: x1.42). Nothing is packed or kept:
// oneDNN's own primitive cache makes a repeated shape cost ~3 us to set up.
#pragma once
#include <torch/types.h>

namespace ldm::nn {

// x @ weight^T + bias (bias may be undefined) for float32 CPU tensors when no
// gradient is needed and autocast is off; an undefined tensor otherwise (or
// where oneDNN is absent, refuses, or has only its reference kernel), and the
// caller runs libtorch's linear. A residual (contiguous, the output's shape)
// is added as the kernel stores its result: a transformer block's skip
// connection without a pass of its own.
torch::Tensor fast_linear(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias,
                          const torch::Tensor& residual = {});

// A transformer's 1x1 projections around its tokens (SpatialTransformer's
// proj_in and proj_out on SD 1.x), under fast_linear's conditions, with the
// layout changes beside them folded into the same matmul: x [B, C, H, W]
// (NCHW-contiguous) through weights [O, C, 1, 1] into tokens [B, H*W, O], the
// same numbers as conv2d(x, w, b).permute(0, 2, 3, 1).reshape(...); and tokens
// h [B, H*W, C] back into the map conv2d(h as [B, C, H, W], w, b) + residual
// ([B, O, H, W], NCHW-contiguous). Undefined where they do not apply.
torch::Tensor fast_conv1x1_to_tokens(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias);
torch::Tensor fast_tokens_to_conv1x1(const torch::Tensor& h, const torch::Tensor& weight, const torch::Tensor& bias,
                                     const torch::Tensor& residual);

// Per thread, initially off where LDM_LINEAR=aten; for A/B runs.
void set_fast_linear(bool on);
bool fast_linear_on();

}  // namespace ldm::nn

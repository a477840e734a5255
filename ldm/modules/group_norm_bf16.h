// GroupNorm (+ SiLU) for bf16 activations on the CPU through the fused kernel
// of group_norm_kernel.h, differentiable in x, weight and bias.
#pragma once
#include <torch/torch.h>

namespace ldm {

// Whether group_norm_bf16 takes x: bf16, on the CPU, on one with AVX2/FMA.
bool group_norm_bf16_applies(const torch::Tensor& x);

// [silu](group_norm(x, groups, weight, bias, eps)) computed in float32 (the
// weights converted), rounded once to bf16: `silu(group_norm(x.float(),
// ...)).bfloat16()` without the float32 tensors.
torch::Tensor group_norm_bf16(const torch::Tensor& x, int64_t groups, const torch::Tensor& weight,
                              const torch::Tensor& bias, double eps, bool silu);

}  // namespace ldm

// GroupNorm (+ a per-sample scale and shift, + SiLU) on the CPU through the
// fused kernel of group_norm_kernel.h, differentiable in every tensor input.
// One pass per group instead of libtorch's norm, multiply, add and SiLU each
// with its own tensor and backward (and, for bf16, its float32 copies). A 4-d
// x stored channels-last is normalised in place of its layout (CPU training's).
#pragma once
#include <torch/torch.h>

namespace ldm {

// Whether group_norm_fused takes x: float32 or bf16, 2+ dims, on the CPU, on
// one with AVX2/FMA.
bool group_norm_fused_applies(const torch::Tensor& x);

// [silu](group_norm(x, groups, weight, bias, eps) * (1 + scale) + shift),
// computed in float32 (weights, scale and shift converted) and rounded once to
// x's dtype. scale and shift: N * C values each (a ResBlock's (N, C, 1, 1)
// halves of its timestep embedding, the reference's use_scale_shift_norm), or
// both undefined for the plain norm.
torch::Tensor group_norm_fused(const torch::Tensor& x, int64_t groups, const torch::Tensor& weight,
                               const torch::Tensor& bias, double eps, bool silu, const torch::Tensor& scale = {},
                               const torch::Tensor& shift = {});

}  // namespace ldm

// GroupNorm (optionally followed by SiLU) on bf16 activations with float32
// statistics, weights and arithmetic, in one pass per group: what
// `silu(group_norm(x.float(), ...)).bfloat16()` computes, without the float32
// copies (torch 1.13 spends more on those casts than on the norm). Torch-free,
// built for the baseline with AVX2/FMA functions chosen at run time.
#pragma once
#include <cstdint>

namespace ldm {

// True when this CPU runs the kernels (AVX2 and FMA).
bool group_norm_bf16_available();

// One (sample, group): x, y hold `channels` rows of `hw` bf16 values
// (contiguous), w and b the group's `channels` weights and biases.
// Writes y = [silu](w (x - mean) rstd + b) and the group's mean and rstd.
void group_norm_bf16_forward(const uint16_t* x, const float* w, const float* b, uint16_t* y, int64_t channels,
                             int64_t hw, float eps, bool silu, float* mean, float* rstd);

// Its gradient for one (sample, group): dx from dy, and per channel the sums
// dw[c] = sum(g * xhat), db[c] = sum(g) (g: the gradient at the norm's output,
// through the SiLU when `silu`). scratch: channels * hw floats.
void group_norm_bf16_backward(const uint16_t* x, const uint16_t* dy, const float* w, const float* b, int64_t channels,
                              int64_t hw, float mean, float rstd, bool silu, uint16_t* dx, float* dw, float* db,
                              float* scratch);

}  // namespace ldm

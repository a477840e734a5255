// GroupNorm (optionally followed by SiLU) in one pass per group, on float32 or
// bf16 activations with float32 statistics, weights and arithmetic: for bf16,
// what `silu(group_norm(x.float(), ...)).bfloat16()` computes without the
// float32 copies (torch 1.13 spends more on those casts than on the norm); for
// float32, the norm and the SiLU without the intermediate tensor and its
// separate backward. Torch-free, built for the baseline with AVX2/FMA
// functions chosen at run time.
#pragma once
#include <cstdint>

namespace ldm {

// True when this CPU runs the kernels (AVX2 and FMA).
bool group_norm_kernel_available();

// One (sample, group): x, y hold `channels` rows of `hw` values (contiguous),
// w and b the group's `channels` weights and biases. Writes
// y = [silu](w (x - mean) rstd + b) and the group's mean and rstd.
void group_norm_kernel_forward(const uint16_t* x, const float* w, const float* b, uint16_t* y, int64_t channels,
                               int64_t hw, float eps, bool silu, float* mean, float* rstd);
void group_norm_kernel_forward(const float* x, const float* w, const float* b, float* y, int64_t channels,
                               int64_t hw, float eps, bool silu, float* mean, float* rstd);

// Its gradient for one (sample, group): dx from dy, and per channel the sums
// dw[c] = sum(g * xhat), db[c] = sum(g) (g: the gradient at the norm's output,
// through the SiLU when `silu`). scratch: channels * hw floats.
void group_norm_kernel_backward(const uint16_t* x, const uint16_t* dy, const float* w, const float* b,
                                int64_t channels, int64_t hw, float mean, float rstd, bool silu, uint16_t* dx,
                                float* dw, float* db, float* scratch);
void group_norm_kernel_backward(const float* x, const float* dy, const float* w, const float* b, int64_t channels,
                                int64_t hw, float mean, float rstd, bool silu, float* dx, float* dw, float* db,
                                float* scratch);

// The same for one sample stored channels-last: x, y, dy, dx hold hw rows of
// c channels; w, b the sample's c weights; mean, rstd its `groups` values;
// dw, db its c per-channel sums. scratch: hw * c floats.
void group_norm_kernel_forward_nhwc(const uint16_t* x, const float* w, const float* b, uint16_t* y, int64_t hw,
                                    int64_t c, int64_t groups, float eps, bool silu, float* mean, float* rstd);
void group_norm_kernel_forward_nhwc(const float* x, const float* w, const float* b, float* y, int64_t hw, int64_t c,
                                    int64_t groups, float eps, bool silu, float* mean, float* rstd);
void group_norm_kernel_backward_nhwc(const uint16_t* x, const uint16_t* dy, const float* w, const float* b,
                                     int64_t hw, int64_t c, int64_t groups, const float* mean, const float* rstd,
                                     bool silu, uint16_t* dx, float* dw, float* db, float* scratch);
void group_norm_kernel_backward_nhwc(const float* x, const float* dy, const float* w, const float* b, int64_t hw,
                                     int64_t c, int64_t groups, const float* mean, const float* rstd, bool silu,
                                     float* dx, float* dw, float* db, float* scratch);

}  // namespace ldm

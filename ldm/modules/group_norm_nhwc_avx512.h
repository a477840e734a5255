// group_norm_kernel.h's channels-last kernels in 16 lanes (AVX-512 with
// AVX512-BF16). Torch-free; group_norm_kernel.cpp dispatches to them.
#pragma once
#include <cstdint>

namespace ldm {

// True when this CPU runs them and c channels split into 16-lane vectors.
bool group_norm_nhwc_avx512_applies(int64_t c);

// As group_norm_kernel_forward_nhwc / group_norm_kernel_backward_nhwc.
void group_norm_nhwc_avx512_forward(const uint16_t* x, const float* w, const float* b, uint16_t* y, int64_t hw,
                                    int64_t c, int64_t groups, float eps, bool silu, float* mean, float* rstd);
void group_norm_nhwc_avx512_forward(const float* x, const float* w, const float* b, float* y, int64_t hw, int64_t c,
                                    int64_t groups, float eps, bool silu, float* mean, float* rstd);
void group_norm_nhwc_avx512_backward(const uint16_t* x, const uint16_t* dy, const float* w, const float* b,
                                     int64_t hw, int64_t c, int64_t groups, const float* mean, const float* rstd,
                                     bool silu, uint16_t* dx, float* dw, float* db, float* scratch);
void group_norm_nhwc_avx512_backward(const float* x, const float* dy, const float* w, const float* b, int64_t hw,
                                     int64_t c, int64_t groups, const float* mean, const float* rstd, bool silu,
                                     float* dx, float* dw, float* db, float* scratch);

}  // namespace ldm

// A float32 matrix transposition between strided buffers, in 8x8 AVX2 blocks
// where the CPU has AVX2 (scalar elsewhere and on the edges): the layout
// changes between NCHW maps and channels-last tiles in winograd_conv, which
// ran as scalar gathers (about a third of its transforms' time).
#pragma once
#include <cstdint>

namespace ldm {

// dst[j * ldd + i] = src[i * lds + j] for i < rows, j < cols.
void transpose_f32(const float* src, int64_t lds, float* dst, int64_t ldd, int64_t rows, int64_t cols);

}  // namespace ldm

#include "ldm/modules/transpose_kernel.h"

#include <immintrin.h>

namespace ldm {

namespace {
#define LDM_AVX2 __attribute__((target("avx2,fma")))

// One 8x8 block: the unpack / shuffle / lane-swap ladder.
LDM_AVX2 inline void block8(const float* src, int64_t lds, float* dst, int64_t ldd) {
  __m256 r[8], t[8], u[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * lds);
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
    u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
    u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  for (int i = 0; i < 4; ++i) {
    _mm256_storeu_ps(dst + i * ldd, _mm256_permute2f128_ps(u[i], u[i + 4], 0x20));
    _mm256_storeu_ps(dst + (i + 4) * ldd, _mm256_permute2f128_ps(u[i], u[i + 4], 0x31));
  }
}

void edges(const float* src, int64_t lds, float* dst, int64_t ldd, int64_t i0, int64_t rows, int64_t j0, int64_t cols) {
  for (int64_t i = i0; i < rows; ++i)
    for (int64_t j = j0; j < cols; ++j) dst[j * ldd + i] = src[i * lds + j];
}

LDM_AVX2 void transpose_avx2(const float* src, int64_t lds, float* dst, int64_t ldd, int64_t rows, int64_t cols) {
  const int64_t r8 = rows / 8 * 8, c8 = cols / 8 * 8;
  for (int64_t i = 0; i < r8; i += 8)
    for (int64_t j = 0; j < c8; j += 8) block8(src + i * lds + j, lds, dst + j * ldd + i, ldd);
  edges(src, lds, dst, ldd, 0, r8, c8, cols);     // the last columns of the full row blocks
  edges(src, lds, dst, ldd, r8, rows, 0, cols);   // the last rows
}

const bool kAvx2 = __builtin_cpu_supports("avx2");
}  // namespace

void transpose_f32(const float* src, int64_t lds, float* dst, int64_t ldd, int64_t rows, int64_t cols) {
  if (kAvx2) return transpose_avx2(src, lds, dst, ldd, rows, cols);
  edges(src, lds, dst, ldd, 0, rows, 0, cols);
}

}  // namespace ldm

#include "ldm/modules/flash_attention_kernel.h"

#include "ldm/modules/flash_attention_simd.h"

namespace ldm {

namespace {
using namespace flash;

constexpr int64_t kRows = 6;  // query rows per register tile (6 x 16 accumulators: 12 of 16 ymm)

#define LDM_BY_ROWS(r, call) \
  switch (r) {               \
    case 6: call(6); break;  \
    case 5: call(5); break;  \
    case 4: call(4); break;  \
    case 3: call(3); break;  \
    case 2: call(2); break;  \
    default: call(1); break; \
  }

// s[R x 16] = q[R x d] kt[d x 16] (a packed panel: rows of 16 in a row).
template <int R>
LDM_AVX2 inline void qk_tile(const float* q, int64_t d, const float* kt, float* s, int64_t lds) {
  __m256 a0[R], a1[R];
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r) a0[r] = a1[r] = _mm256_setzero_ps();
  for (int64_t c = 0; c < d; ++c) {
    const __m256 b0 = _mm256_loadu_ps(kt + c * 16), b1 = _mm256_loadu_ps(kt + c * 16 + 8);
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) {
      const __m256 a = _mm256_broadcast_ss(q + r * d + c);
      a0[r] = _mm256_fmadd_ps(a, b0, a0[r]);
      a1[r] = _mm256_fmadd_ps(a, b1, a1[r]);
    }
  }
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r) {
    _mm256_storeu_ps(s + r * lds, a0[r]);
    _mm256_storeu_ps(s + r * lds + 8, a1[r]);
  }
}

// o[R x 8W] += p[R x kb] v[kb x 8W] (v's rows d apart, o's rows d apart).
template <int R, int W>
LDM_AVX2 inline void pv_tile(const float* p, int64_t ldp, const float* v, int64_t d, int64_t kb, float* o) {
  __m256 acc[R][W];
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 2
    for (int w = 0; w < W; ++w) acc[r][w] = _mm256_loadu_ps(o + r * d + 8 * w);
  for (int64_t j = 0; j < kb; ++j) {
    __m256 b[W];
#pragma GCC unroll 2
    for (int w = 0; w < W; ++w) b[w] = _mm256_loadu_ps(v + j * d + 8 * w);
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) {
      const __m256 a = _mm256_broadcast_ss(p + r * ldp + j);
#pragma GCC unroll 2
      for (int w = 0; w < W; ++w) acc[r][w] = _mm256_fmadd_ps(a, b[w], acc[r][w]);
    }
  }
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 2
    for (int w = 0; w < W; ++w) _mm256_storeu_ps(o + r * d + 8 * w, acc[r][w]);
}

// s[rows x kb] = q[rows x d] k^T for kb keys in 16-key panels; kb a multiple of 16.
LDM_AVX2 void qk_block(const float* q, int64_t rows, int64_t d, const float* kt, int64_t kb, float* s, int64_t lds) {
  for (int64_t i = 0; i < rows; i += kRows) {
    const int64_t r = rows - i < kRows ? rows - i : kRows;
    for (int64_t j = 0; j < kb; j += 16) {
#define LDM_QK(R) qk_tile<R>(q + i * d, d, kt + j * d, s + i * lds + j, lds)
      LDM_BY_ROWS(r, LDM_QK)
#undef LDM_QK
    }
  }
}

// o[rows x d] += p[rows x kb] v[kb x d]; d a multiple of 8.
LDM_AVX2 void pv_block(const float* p, int64_t rows, int64_t ldp, const float* v, int64_t d, int64_t kb, float* o) {
  for (int64_t i = 0; i < rows; i += kRows) {
    const int64_t r = rows - i < kRows ? rows - i : kRows;
    int64_t c = 0;
    for (; c + 16 <= d; c += 16) {
#define LDM_PV2(R) pv_tile<R, 2>(p + i * ldp, ldp, v + c, d, kb, o + i * d + c)
      LDM_BY_ROWS(r, LDM_PV2)
#undef LDM_PV2
    }
    if (c < d) {
#define LDM_PV1(R) pv_tile<R, 1>(p + i * ldp, ldp, v + c, d, kb, o + i * d + c)
      LDM_BY_ROWS(r, LDM_PV1)
#undef LDM_PV1
    }
  }
}

}  // namespace

bool flash_attention_available() { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }

int64_t flash_attention_scratch(int64_t d) { return kQB * key_block(d) + kQB * d + 2 * kQB; }

LDM_AVX2 void flash_attention_rows(const float* q, const float* kt, const float* v, float* out, int64_t ldo, int64_t r0,
                                   int64_t r1, int64_t M, int64_t Mp, int64_t d, float* scratch) {
  attention_rows_f32(q, kt, v, out, ldo, r0, r1, M, Mp, d, scratch, qk_block, online_softmax, pv_block);
}

}  // namespace ldm

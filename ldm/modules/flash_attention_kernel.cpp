#include "ldm/modules/flash_attention_kernel.h"

#include <immintrin.h>

#include <cmath>

// The build targets baseline x86-64: these functions carry AVX2/FMA
// themselves and run only where flash_attention_available() says so.
#define LDM_AVX2 __attribute__((target("avx2,fma")))

namespace ldm {

namespace {
constexpr int64_t kRows = 6;  // query rows per register tile (6 x 16 accumulators: 12 of 16 ymm)
constexpr int64_t kQB = 48;   // query rows per block

// Key columns per block: a block's keys and values (2 x kb x d floats) stay in L2.
int64_t key_block(int64_t d) {
  const int64_t kb = (32768 / d) / 16 * 16;
  return kb < 16 ? 16 : (kb > 256 ? 256 : kb);
}

// 2^x: Cephes' exp2f polynomial on [-0.5, 0.5] (relative error ~1e-7) times
// 2^round(x) built in the exponent bits. NaN passes through (max/min return
// their second operand for NaN).
LDM_AVX2 inline __m256 exp2_ps(__m256 x) {
  x = _mm256_max_ps(_mm256_set1_ps(-126.0f), x);
  x = _mm256_min_ps(_mm256_set1_ps(126.0f), x);
  const __m256 n = _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256 f = _mm256_sub_ps(x, n);
  __m256 p = _mm256_set1_ps(1.535336188319500e-4f);
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.339887440266574e-3f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(9.618437357674640e-3f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(5.550332471162809e-2f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(2.402264791363012e-1f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(6.931472028550421e-1f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

LDM_AVX2 inline float hmax(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
  return _mm_cvtss_f32(m);
}

LDM_AVX2 inline float hsum(__m256 v) {
  __m128 m = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_add_ps(m, _mm_movehl_ps(m, m));
  m = _mm_add_ss(m, _mm_shuffle_ps(m, m, 1));
  return _mm_cvtss_f32(m);
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

#define LDM_BY_ROWS(r, call) \
  switch (r) {               \
    case 6: call(6); break;  \
    case 5: call(5); break;  \
    case 4: call(4); break;  \
    case 3: call(3); break;  \
    case 2: call(2); break;  \
    default: call(1); break; \
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

// The online softmax (Milakov & Gimelshein 2018): the block's scores become
// 2^(s - m_new) in place; the running sum l and the accumulated output o are
// rescaled by 2^(m_old - m_new). Columns from `valid` on are padding.
LDM_AVX2 void online_softmax(float* s, int64_t rows, int64_t lds, int64_t kb, int64_t valid, float* m, float* l,
                             float* o, int64_t d) {
  for (int64_t i = 0; i < rows; ++i) {
    float* row = s + i * lds;
    for (int64_t j = valid; j < kb; ++j) row[j] = -INFINITY;
    __m256 mx = _mm256_set1_ps(-INFINITY);
    for (int64_t j = 0; j < kb; j += 8) mx = _mm256_max_ps(mx, _mm256_loadu_ps(row + j));
    const float block_max = hmax(mx);
    const float m_new = block_max > m[i] ? block_max : m[i];
    const float alpha = std::exp2(m[i] - m_new);  // 0 on the first block (m = -inf)
    const __m256 mv = _mm256_set1_ps(m_new);
    __m256 sum = _mm256_setzero_ps();
    for (int64_t j = 0; j < kb; j += 8) {
      const __m256 e = exp2_ps(_mm256_sub_ps(_mm256_loadu_ps(row + j), mv));
      _mm256_storeu_ps(row + j, e);
      sum = _mm256_add_ps(sum, e);
    }
    l[i] = l[i] * alpha + hsum(sum);
    m[i] = m_new;
    if (alpha != 1.0f) {
      const __m256 av = _mm256_set1_ps(alpha);
      for (int64_t c = 0; c < d; c += 8) _mm256_storeu_ps(o + i * d + c, _mm256_mul_ps(_mm256_loadu_ps(o + i * d + c), av));
    }
  }
}
}  // namespace

bool flash_attention_available() { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }

int64_t flash_attention_scratch(int64_t d) { return kQB * key_block(d) + kQB * d + 2 * kQB; }

LDM_AVX2 void flash_attention_rows(const float* q, const float* kt, const float* v, float* out, int64_t r0, int64_t r1,
                                   int64_t M, int64_t Mp, int64_t d, float* scratch) {
  const int64_t kb_max = key_block(d);
  float* s = scratch;
  float* o = s + kQB * kb_max;
  float* m = o + kQB * d;
  float* l = m + kQB;
  for (int64_t i0 = r0; i0 < r1; i0 += kQB) {
    const int64_t rows = r1 - i0 < kQB ? r1 - i0 : kQB;
    for (int64_t i = 0; i < rows; ++i) m[i] = -INFINITY, l[i] = 0.0f;
    for (int64_t c = 0; c < rows * d; ++c) o[c] = 0.0f;
    for (int64_t j0 = 0; j0 < Mp; j0 += kb_max) {
      const int64_t kb = Mp - j0 < kb_max ? Mp - j0 : kb_max;
      qk_block(q + i0 * d, rows, d, kt + j0 * d, kb, s, kb_max);
      online_softmax(s, rows, kb_max, kb, M - j0 < kb ? M - j0 : kb, m, l, o, d);
      pv_block(s, rows, kb_max, v + j0 * d, d, kb, o);
    }
    for (int64_t i = 0; i < rows; ++i) {
      const __m256 inv = _mm256_set1_ps(1.0f / l[i]);
      for (int64_t c = 0; c < d; c += 8)
        _mm256_storeu_ps(out + (i0 + i) * d + c, _mm256_mul_ps(_mm256_loadu_ps(o + i * d + c), inv));
    }
  }
}

}  // namespace ldm

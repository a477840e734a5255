// The fused attention kernel in bf16: the float32 kernel's tiling and online
// softmax (flash_attention_simd.h), with both products on AVX512-BF16's
// VDPBF16PS (pairs of bf16 multiplied and summed into float32 lanes, twice
// the FLOPs per instruction of an FMA). Scores, softmax and the output
// accumulator stay float32; the probabilities are rounded to bf16 for p v.
#include <cstring>

#include "ldm/modules/flash_attention_kernel.h"
#include "ldm/modules/flash_attention_simd.h"

#define LDM_BF16 __attribute__((target("avx512bf16,avx512vl,avx512bw,avx512f,avx2,fma")))

namespace ldm {

namespace {
using namespace flash;

// Two bf16 at p as one 32-bit lane, repeated in all eight.
LDM_BF16 inline __m256bh pair_bcast(const uint16_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return (__m256bh)_mm256_set1_epi32(v);
}

LDM_BF16 inline __m256bh load_bh(const uint16_t* p) { return (__m256bh)_mm256_loadu_si256((const __m256i*)p); }

// Eight float32 to bf16 (round to nearest even) at dst.
LDM_BF16 inline void store_bf16(uint16_t* dst, __m256 v) {
  _mm_storeu_si128((__m128i*)dst, (__m128i)_mm256_cvtneps_pbh(v));
}

// 2^x to a relative 7.5e-5 (a degree-3 fit of 2^f on [-0.5, 0.5], weighted
// towards minimax; Cephes' degree 6 in the float32 kernel): the
// probabilities are rounded to bf16 (2^-9) anyway, and the exp is a third of
// this kernel's time. Range and NaN handling as exp2_ps.
LDM_BF16 inline __m256 exp2_ps_bf16(__m256 x) {
  x = _mm256_max_ps(_mm256_set1_ps(-126.0f), x);
  x = _mm256_min_ps(_mm256_set1_ps(126.0f), x);
  const __m256 n = _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256 f = _mm256_sub_ps(x, n);
  __m256 p = _mm256_set1_ps(0.05517027f);
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(0.24260795f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(0.69326093f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(0.99992828f));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

// The online softmax of flash_attention_simd.h, with the probabilities
// written to p in bf16 by the exp pass itself (one pass over the scores less).
LDM_BF16 void online_softmax_bf16(float* s, int64_t rows, int64_t lds, int64_t kb, int64_t valid, float* m, float* l,
                                  float* o, int64_t d, uint16_t* p) {
  for (int64_t i = 0; i < rows; ++i) {
    float* row = s + i * lds;
    const float m_new = block_max(row, kb, valid, m[i]);
    const float alpha = std::exp2(m[i] - m_new);
    const __m256 mv = _mm256_set1_ps(m_new);
    __m256 sum = _mm256_setzero_ps();
    for (int64_t j = 0; j < kb; j += 8) {
      const __m256 e = exp2_ps_bf16(_mm256_sub_ps(_mm256_loadu_ps(row + j), mv));
      store_bf16(p + i * lds + j, e);
      sum = _mm256_add_ps(sum, e);
    }
    l[i] = l[i] * alpha + hsum(sum);
    m[i] = m_new;
    rescale_row(o + i * d, d, alpha);
  }
}

// s[R x 16] = q[R x d] k^T for a 16-key panel stored [d / 2][16][2]: a
// dimension pair of 16 keys per 32 bf16.
template <int R>
LDM_BF16 inline void qk_tile(const uint16_t* q, int64_t d, const uint16_t* kt, float* s, int64_t lds) {
  __m256 a0[R], a1[R];
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r) a0[r] = a1[r] = _mm256_setzero_ps();
  for (int64_t c = 0; c < d; c += 2) {
    const __m256bh b0 = load_bh(kt + c * 16), b1 = load_bh(kt + c * 16 + 16);
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) {
      const __m256bh a = pair_bcast(q + r * d + c);
      a0[r] = _mm256_dpbf16_ps(a0[r], a, b0);
      a1[r] = _mm256_dpbf16_ps(a1[r], a, b1);
    }
  }
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r) {
    _mm256_storeu_ps(s + r * lds, a0[r]);
    _mm256_storeu_ps(s + r * lds + 8, a1[r]);
  }
}

// o[R x 8W] += p[R x kb] v for values stored in key pairs [kb / 2][d][2]
// (v points at this tile's first column pair; o's rows d apart).
template <int R, int W>
LDM_BF16 inline void pv_tile(const uint16_t* p, int64_t ldp, const uint16_t* v, int64_t d, int64_t kb, float* o) {
  __m256 acc[R][W];
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 2
    for (int w = 0; w < W; ++w) acc[r][w] = _mm256_loadu_ps(o + r * d + 8 * w);
  for (int64_t j = 0; j < kb; j += 2) {
    __m256bh b[W];
#pragma GCC unroll 2
    for (int w = 0; w < W; ++w) b[w] = load_bh(v + j * d + 16 * w);
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) {
      const __m256bh a = pair_bcast(p + r * ldp + j);
#pragma GCC unroll 2
      for (int w = 0; w < W; ++w) acc[r][w] = _mm256_dpbf16_ps(acc[r][w], a, b[w]);
    }
  }
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 2
    for (int w = 0; w < W; ++w) _mm256_storeu_ps(o + r * d + 8 * w, acc[r][w]);
}

LDM_BF16 void qk_block(const uint16_t* q, int64_t rows, int64_t d, const uint16_t* kt, int64_t kb, float* s,
                       int64_t lds) {
  for (int64_t i = 0; i < rows; i += kRows) {
    const int64_t r = rows - i < kRows ? rows - i : kRows;
    for (int64_t j = 0; j < kb; j += 16) {
#define LDM_QK(R) qk_tile<R>(q + i * d, d, kt + j * d, s + i * lds + j, lds)
      LDM_BY_ROWS(r, LDM_QK)
#undef LDM_QK
    }
  }
}

LDM_BF16 void pv_block(const uint16_t* p, int64_t rows, int64_t ldp, const uint16_t* v, int64_t d, int64_t kb,
                       float* o) {
  for (int64_t i = 0; i < rows; i += kRows) {
    const int64_t r = rows - i < kRows ? rows - i : kRows;
    int64_t c = 0;
    for (; c + 16 <= d; c += 16) {
#define LDM_PV2(R) pv_tile<R, 2>(p + i * ldp, ldp, v + 2 * c, d, kb, o + i * d + c)
      LDM_BY_ROWS(r, LDM_PV2)
#undef LDM_PV2
    }
    if (c < d) {
#define LDM_PV1(R) pv_tile<R, 1>(p + i * ldp, ldp, v + 2 * c, d, kb, o + i * d + c)
      LDM_BY_ROWS(r, LDM_PV1)
#undef LDM_PV1
    }
  }
}
}  // namespace

bool flash_attention_bf16_available() {
  return flash_attention_available() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512bf16");
}

int64_t flash_attention_bf16_scratch(int64_t d) {
  return kQB * key_block(d) * 3 / 2 + kQB * d + 2 * kQB;  // scores, their bf16 copy, o, m, l (in floats)
}

LDM_BF16 void flash_attention_rows_bf16(const uint16_t* q, const uint16_t* kt, const uint16_t* v, uint16_t* out,
                                        int64_t r0, int64_t r1, int64_t M, int64_t Mp, int64_t d, float* scratch) {
  const int64_t kb_max = key_block(d);
  float* s = scratch;
  uint16_t* p = reinterpret_cast<uint16_t*>(s + kQB * kb_max);
  float* o = s + kQB * kb_max * 3 / 2;
  float* m = o + kQB * d;
  float* l = m + kQB;
  for (int64_t i0 = r0; i0 < r1; i0 += kQB) {
    const int64_t rows = r1 - i0 < kQB ? r1 - i0 : kQB;
    for (int64_t i = 0; i < rows; ++i) m[i] = -INFINITY, l[i] = 0.0f;
    for (int64_t c = 0; c < rows * d; ++c) o[c] = 0.0f;
    for (int64_t j0 = 0; j0 < Mp; j0 += kb_max) {
      const int64_t kb = Mp - j0 < kb_max ? Mp - j0 : kb_max;
      qk_block(q + i0 * d, rows, d, kt + j0 * d, kb, s, kb_max);
      online_softmax_bf16(s, rows, kb_max, kb, M - j0 < kb ? M - j0 : kb, m, l, o, d, p);
      pv_block(p, rows, kb_max, v + j0 * d, d, kb, o);
    }
    for (int64_t i = 0; i < rows; ++i) {
      const __m256 inv = _mm256_set1_ps(1.0f / l[i]);
      for (int64_t c = 0; c < d; c += 8)
        store_bf16(out + (i0 + i) * d + c, _mm256_mul_ps(_mm256_loadu_ps(o + i * d + c), inv));
    }
  }
}

}  // namespace ldm

// The bf16 fused attention kernels' softmax (flash_attention_bf16.cpp on
// AVX512-BF16, flash_attention_amx.cpp on AMX): a base-2 exp fitted to bf16's
// precision and the online softmax that writes the bf16 probabilities in its
// exp pass. Internal to those files, whose callers have checked the CPU.
#pragma once
#include <immintrin.h>

#include <cmath>
#include <cstdint>

#include "ldm/modules/flash_attention_simd.h"

#define LDM_BF16 __attribute__((target("avx512bf16,avx512vl,avx512bw,avx512f,avx2,fma")))

namespace ldm::flash {

// Eight float32 to bf16 (round to nearest even) at dst.
LDM_BF16 inline void store_bf16(uint16_t* dst, __m256 v) {
  _mm_storeu_si128((__m128i*)dst, (__m128i)_mm256_cvtneps_pbh(v));
}

// 2^x to a relative 7.5e-5 (a degree-3 fit of 2^f on [-0.5, 0.5], weighted
// towards minimax; Cephes' degree 6 in the float32 kernel): the
// probabilities are rounded to bf16 (2^-9) anyway, and the exp is a third of
// this kernel's time. Range and NaN handling as exp2_ps.
LDM_BF16 inline __m512 exp2_ps_bf16(__m512 x) {
  x = _mm512_max_ps(_mm512_set1_ps(-126.0f), x);
  x = _mm512_min_ps(_mm512_set1_ps(126.0f), x);
  const __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(x, n);
  __m512 p = _mm512_set1_ps(0.05517027f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.24260795f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.69326093f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.99992828f));
  return _mm512_scalef_ps(p, n);
}

// The online softmax of flash_attention_simd.h, 16 lanes at a time, with the
// probabilities written to p in bf16 by the exp pass itself (one pass over
// the scores less). kb a multiple of 16.
LDM_BF16 inline void online_softmax_bf16(float* s, int64_t rows, int64_t lds, int64_t kb, int64_t valid, float* m, float* l,
                                  float* o, int64_t d, uint16_t* p) {
  for (int64_t i = 0; i < rows; ++i) {
    float* row = s + i * lds;
    for (int64_t j = valid; j < kb; ++j) row[j] = -INFINITY;
    __m512 mx = _mm512_set1_ps(-INFINITY);
    for (int64_t j = 0; j < kb; j += 16) mx = _mm512_max_ps(mx, _mm512_loadu_ps(row + j));
    const float bm = _mm512_reduce_max_ps(mx);
    const float m_new = bm > m[i] ? bm : m[i];
    const float alpha = std::exp2(m[i] - m_new);
    const __m512 mv = _mm512_set1_ps(m_new);
    __m512 sum = _mm512_setzero_ps();
    for (int64_t j = 0; j < kb; j += 16) {
      const __m512 e = exp2_ps_bf16(_mm512_sub_ps(_mm512_loadu_ps(row + j), mv));
      _mm256_storeu_si256((__m256i*)(p + i * lds + j), (__m256i)_mm512_cvtneps_pbh(e));
      sum = _mm512_add_ps(sum, e);
    }
    l[i] = l[i] * alpha + _mm512_reduce_add_ps(sum);
    m[i] = m_new;
    rescale_row(o + i * d, d, alpha);
  }
}

}  // namespace ldm::flash

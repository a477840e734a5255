// float32 and bf16 (as uint16_t) values to float32 and back, one or eight at
// a time (AVX2), for kernels templated on the stored type (GroupNorm, GEGLU).
// bf16 is float32's high half; back to it rounds to nearest even, as
// c10::BFloat16, and a NaN stays NaN. Internal to those kernels, whose
// callers have checked the CPU.
#pragma once
#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#include "ldm/modules/flash_attention_simd.h"  // LDM_AVX2

namespace ldm::simd {

inline float to_float(float v) { return v; }
inline float to_float(uint16_t v) {
  const uint32_t u = uint32_t(v) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline void store1(float* p, float f) { *p = f; }
inline void store1(uint16_t* p, float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  *p = std::isnan(f) ? uint16_t{0x7fc0} : uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

LDM_AVX2 inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
LDM_AVX2 inline void store8(float* p, __m256 v) { _mm256_storeu_ps(p, v); }
LDM_AVX2 inline __m256 load8(const uint16_t* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
LDM_AVX2 inline void store8(uint16_t* p, __m256 v) {
  __m256i u = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  u = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
  const __m256 nan = _mm256_cmp_ps(v, v, _CMP_UNORD_Q);
  u = _mm256_blendv_epi8(u, _mm256_set1_epi32(0x7fc0), _mm256_castps_si256(nan));
  const __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(u), _mm256_extracti128_si256(u, 1));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), packed);
}

}  // namespace ldm::simd

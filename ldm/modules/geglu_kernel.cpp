#include "ldm/modules/geglu_kernel.h"

#include <cmath>
#include <cstring>

#include "ldm/modules/flash_attention_simd.h"  // LDM_AVX2, exp2_ps

namespace ldm {
namespace {

using flash::exp2_ps;

// Abramowitz & Stegun 7.1.26: erf(x) = 1 - t (a1 + t (a2 + ... a5 t)) e^(-x^2), t = 1 / (1 + p x), x >= 0
constexpr float kP = 0.3275911f, kA1 = 0.254829592f, kA2 = -0.284496736f, kA3 = 1.421413741f, kA4 = -1.453152027f,
                kA5 = 1.061405429f;
constexpr float kLog2e = 1.4426950408889634f, kSqrtHalf = 0.70710678118654752f;

LDM_AVX2 inline __m256 erf_ps(__m256 x) {
  const __m256 sign = _mm256_and_ps(x, _mm256_set1_ps(-0.0f));
  const __m256 ax = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), x);
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 t = _mm256_div_ps(one, _mm256_fmadd_ps(_mm256_set1_ps(kP), ax, one));
  __m256 poly = _mm256_set1_ps(kA5);
  for (float a : {kA4, kA3, kA2, kA1}) poly = _mm256_fmadd_ps(poly, t, _mm256_set1_ps(a));
  poly = _mm256_mul_ps(poly, t);
  const __m256 e = exp2_ps(_mm256_mul_ps(_mm256_mul_ps(ax, ax), _mm256_set1_ps(-kLog2e)));
  return _mm256_or_ps(_mm256_fnmadd_ps(poly, e, one), sign);  // 1 - poly e >= 0, the sign of x
}

float gelu_tail(float a, float g) { return a * 0.5f * g * (1.0f + std::erf(g * kSqrtHalf)); }

LDM_AVX2 inline __m256 geglu_ps(__m256 a, __m256 g) {
  const __m256 half = _mm256_set1_ps(0.5f), sq = _mm256_set1_ps(kSqrtHalf), one = _mm256_set1_ps(1.0f);
  return _mm256_mul_ps(a, _mm256_mul_ps(_mm256_mul_ps(half, g), _mm256_add_ps(one, erf_ps(_mm256_mul_ps(g, sq)))));
}

// Eight bf16 to float32: the bits are float32's high half.
LDM_AVX2 inline __m256 load_bf16(const uint16_t* p) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)p)), 16));
}

// Eight float32 to bf16, to nearest even (c10::BFloat16's rounding; NaN stays NaN).
LDM_AVX2 inline void store_bf16(uint16_t* p, __m256 v) {
  const __m256i b = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(b, 16), _mm256_set1_epi32(1));
  __m256i r = _mm256_srli_epi32(_mm256_add_epi32(b, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  r = _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7fc0), nan);
  const __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
  _mm_storeu_si128((__m128i*)p, packed);
}

float bf16_to_float(uint16_t v) {
  const uint32_t b = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}

uint16_t float_to_bf16(float f) {
  if (std::isnan(f)) return 0x7fc0;
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return static_cast<uint16_t>((b + 0x7fff + ((b >> 16) & 1)) >> 16);
}

}  // namespace

bool geglu_available() { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }

LDM_AVX2 void geglu_rows(const float* h, int64_t ldh, float* out, int64_t rows, int64_t n) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* a = h + r * ldh;
    const float* g = a + n;
    float* o = out + r * n;
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) _mm256_storeu_ps(o + j, geglu_ps(_mm256_loadu_ps(a + j), _mm256_loadu_ps(g + j)));
    for (; j < n; ++j) o[j] = gelu_tail(a[j], g[j]);
  }
}

LDM_AVX2 void geglu_rows_bf16(const uint16_t* h, int64_t ldh, uint16_t* out, int64_t rows, int64_t n) {
  for (int64_t r = 0; r < rows; ++r) {
    const uint16_t* a = h + r * ldh;
    const uint16_t* g = a + n;
    uint16_t* o = out + r * n;
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) store_bf16(o + j, geglu_ps(load_bf16(a + j), load_bf16(g + j)));
    for (; j < n; ++j) o[j] = float_to_bf16(gelu_tail(bf16_to_float(a[j]), bf16_to_float(g[j])));
  }
}

}  // namespace ldm

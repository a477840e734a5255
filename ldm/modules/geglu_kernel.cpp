#include "ldm/modules/geglu_kernel.h"

#include <cmath>
#include <cstring>

#include "ldm/modules/flash_attention_simd.h"  // LDM_AVX2, exp2_ps
#include "ldm/modules/simd_bf16.h"

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

using simd::load8;
using simd::store1;
using simd::store8;
using simd::to_float;

template <class T>
LDM_AVX2 void rows_of(const T* h, int64_t ldh, T* out, int64_t rows, int64_t n) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* a = h + r * ldh;
    const T* g = a + n;
    T* o = out + r * n;
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) store8(o + j, geglu_ps(load8(a + j), load8(g + j)));
    for (; j < n; ++j) store1(o + j, gelu_tail(to_float(a[j]), to_float(g[j])));
  }
}

}  // namespace

bool geglu_available() { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }

void geglu_rows(const float* h, int64_t ldh, float* out, int64_t rows, int64_t n) { rows_of(h, ldh, out, rows, n); }

void geglu_rows_bf16(const uint16_t* h, int64_t ldh, uint16_t* out, int64_t rows, int64_t n) {
  rows_of(h, ldh, out, rows, n);
}

}  // namespace ldm

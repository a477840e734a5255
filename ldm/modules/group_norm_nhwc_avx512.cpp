// The channels-last GroupNorm kernels of group_norm_kernel.cpp in 16 lanes,
// for CPUs with AVX-512 and AVX512-BF16 (Zen 4, Sapphire Rapids): the same
// statistics (per-channel float sums within kRows pixels, double across), the
// same exp2 and the same order of operations per value, so float32 results
// equal the AVX2 kernels'; bf16 is rounded by VCVTNEPS2BF16 (nearest even, as
// c10::BFloat16). At the main job's shapes (32-128 channels) the 8-lane
// kernels were bound by instruction count, not memory: ~1 ns a value forward.
// Channel counts that are not a multiple of 16 stay on the AVX2 kernels.
#include "ldm/modules/group_norm_nhwc_avx512.h"

#include <immintrin.h>

#include <cmath>
#include <vector>

#include "ldm/modules/flash_attention_simd.h"  // exp2_ps16
#include "ldm/modules/group_norm_nhwc_common.h"

#define LDM_GN512 __attribute__((target("avx512bf16,avx512f,avx512dq,avx512vl,avx512bw,avx2,fma")))

namespace ldm {
namespace {

using flash::exp2_ps16;
constexpr int64_t kRows = 256;  // as group_norm_kernel.cpp's
constexpr float kLog2e = 1.4426950408889634f;

LDM_GN512 inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
LDM_GN512 inline void store16(float* p, __m512 v) { _mm512_storeu_ps(p, v); }
LDM_GN512 inline __m512 load16(const uint16_t* p) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
LDM_GN512 inline void store16(uint16_t* p, __m512 v) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(v)));
}
LDM_GN512 inline __m512 sigmoid16(__m512 y) {
  const __m512 e = exp2_ps16(_mm512_mul_ps(y, _mm512_set1_ps(-kLog2e)));
  return _mm512_div_ps(_mm512_set1_ps(1.0f), _mm512_add_ps(_mm512_set1_ps(1.0f), e));
}
// dy silu'(y), silu'(y) = s (1 + y (1 - s)), s = sigmoid(y)
LDM_GN512 inline __m512 silu_grad16(__m512 dy, __m512 y) {
  const __m512 s = sigmoid16(y), one = _mm512_set1_ps(1.0f);
  return _mm512_mul_ps(dy, _mm512_mul_ps(s, _mm512_fmadd_ps(y, _mm512_sub_ps(one, s), one)));
}

// out[k] = sum over the rows of x[r, k] (p = 1) or (x[r, k] - center[k])^2 (p = 2)
template <typename T>
LDM_GN512 void channel_sums16(const T* x, int64_t hw, int64_t c, const float* center, int p, double* out) {
  std::vector<float> acc(c);
  for (int64_t k = 0; k < c; ++k) out[k] = 0;
  for (int64_t r0 = 0; r0 < hw; r0 += kRows) {
    std::fill(acc.begin(), acc.end(), 0.0f);
    const int64_t r1 = std::min(r0 + kRows, hw);
    for (int64_t k = 0; k < c; k += 16) {
      __m512 a = _mm512_setzero_ps();
      const __m512 cv = p == 2 ? load16(center + k) : _mm512_setzero_ps();
      for (int64_t r = r0; r < r1; ++r) {
        const __m512 v = load16(x + r * c + k);
        a = p == 1 ? _mm512_add_ps(a, v) : _mm512_fmadd_ps(_mm512_sub_ps(v, cv), _mm512_sub_ps(v, cv), a);
      }
      store16(acc.data() + k, a);
    }
    for (int64_t k = 0; k < c; ++k) out[k] += acc[k];
  }
}

template <typename T>
LDM_GN512 void forward16(const T* x, const float* w, const float* b, T* y, int64_t hw, int64_t c, int64_t groups,
                         float eps, bool silu, float* mean, float* rstd) {
  const gn::ChannelStats st = gn::nhwc_stats(
      [&](const float* center, int p, double* out) { channel_sums16(x, hw, c, center, p, out); }, hw, c, groups,
      eps, mean, rstd);
  std::vector<float> scale(c), shift(c);
  for (int64_t k = 0; k < c; ++k) scale[k] = st.rstd[k] * w[k], shift[k] = b[k] - st.mean[k] * scale[k];
  for (int64_t k = 0; k < c; k += 16) {
    const __m512 sv = load16(scale.data() + k), hv = load16(shift.data() + k);
    for (int64_t r = 0; r < hw; ++r) {
      __m512 v = _mm512_fmadd_ps(load16(x + r * c + k), sv, hv);
      if (silu) v = _mm512_mul_ps(v, sigmoid16(v));
      store16(y + r * c + k, v);
    }
  }
}

// group_norm_kernel.cpp's backward_nhwc_avx2 in 16 lanes.
template <typename T>
LDM_GN512 void backward16(const T* x, const T* dy, const float* w, const float* b, int64_t hw, int64_t c,
                          int64_t groups, const float* mean, const float* rstd, bool silu, T* dx, float* dw,
                          float* db, float* scratch) {
  const int64_t cg = c / groups;
  std::vector<float> mc(c), rc(c), scale(c), shift(c);
  for (int64_t k = 0; k < c; ++k) {
    mc[k] = mean[k / cg], rc[k] = rstd[k / cg];
    scale[k] = rc[k] * w[k], shift[k] = b[k] - mc[k] * scale[k];
  }
  std::vector<double> sg(c, 0.0), sgx(c, 0.0);
  // g (through the SiLU) into scratch, and per channel sum(g), sum(g xhat)
  for (int64_t r0 = 0; r0 < hw; r0 += kRows) {
    const int64_t r1 = std::min(r0 + kRows, hw);
    for (int64_t k = 0; k < c; k += 16) {
      const __m512 sv = load16(&scale[k]), hv = load16(&shift[k]), mv = load16(&mc[k]), rv = load16(&rc[k]);
      __m512 a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps();
      for (int64_t r = r0; r < r1; ++r) {
        const __m512 xv = load16(x + r * c + k);
        __m512 g = load16(dy + r * c + k);
        if (silu) g = silu_grad16(g, _mm512_fmadd_ps(xv, sv, hv));
        store16(scratch + r * c + k, g);
        a1 = _mm512_add_ps(a1, g);
        a2 = _mm512_fmadd_ps(g, _mm512_mul_ps(_mm512_sub_ps(xv, mv), rv), a2);
      }
      alignas(64) float t1[16], t2[16];
      store16(t1, a1), store16(t2, a2);
      for (int j = 0; j < 16; ++j) sg[k + j] += t1[j], sgx[k + j] += t2[j];
    }
  }
  // dx = rstd (w g - (A + xhat B) / m) per group
  std::vector<float> am, bm;
  gn::nhwc_grad_terms(w, sg, sgx, hw, c, groups, dw, db, am, bm);
  for (int64_t k = 0; k < c; k += 16) {
    const __m512 rv = load16(&rc[k]), mv = load16(&mc[k]), wv = load16(w + k), bv = load16(&bm[k]),
                 av = load16(&am[k]);
    for (int64_t r = 0; r < hw; ++r) {
      const __m512 xhat = _mm512_mul_ps(_mm512_sub_ps(load16(x + r * c + k), mv), rv);
      const __m512 inner =
          _mm512_sub_ps(_mm512_mul_ps(wv, load16(scratch + r * c + k)), _mm512_fmadd_ps(xhat, bv, av));
      store16(dx + r * c + k, _mm512_mul_ps(rv, inner));
    }
  }
}

}  // namespace

bool group_norm_nhwc_avx512_applies(int64_t c) {
  static const bool cpu = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
                          __builtin_cpu_supports("avx512bf16");
  return cpu && c % 16 == 0 && c > 0;
}

void group_norm_nhwc_avx512_forward(const uint16_t* x, const float* w, const float* b, uint16_t* y, int64_t hw,
                                    int64_t c, int64_t groups, float eps, bool silu, float* mean, float* rstd) {
  forward16(x, w, b, y, hw, c, groups, eps, silu, mean, rstd);
}
void group_norm_nhwc_avx512_forward(const float* x, const float* w, const float* b, float* y, int64_t hw, int64_t c,
                                    int64_t groups, float eps, bool silu, float* mean, float* rstd) {
  forward16(x, w, b, y, hw, c, groups, eps, silu, mean, rstd);
}
void group_norm_nhwc_avx512_backward(const uint16_t* x, const uint16_t* dy, const float* w, const float* b,
                                     int64_t hw, int64_t c, int64_t groups, const float* mean, const float* rstd,
                                     bool silu, uint16_t* dx, float* dw, float* db, float* scratch) {
  backward16(x, dy, w, b, hw, c, groups, mean, rstd, silu, dx, dw, db, scratch);
}
void group_norm_nhwc_avx512_backward(const float* x, const float* dy, const float* w, const float* b, int64_t hw,
                                     int64_t c, int64_t groups, const float* mean, const float* rstd, bool silu,
                                     float* dx, float* dw, float* db, float* scratch) {
  backward16(x, dy, w, b, hw, c, groups, mean, rstd, silu, dx, dw, db, scratch);
}

}  // namespace ldm

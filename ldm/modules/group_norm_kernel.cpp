// GroupNorm (+ SiLU) on float32 or bf16 with float32 arithmetic: AVX2 loops
// over one (sample, group), templated on the stored type. Sums run in float
// over blocks of kBlock values and in double across blocks, so large groups (a
// VAE's 512x512 level) keep float32 precision. bf16 is rounded to nearest
// even, as c10::BFloat16.
#include "ldm/modules/group_norm_kernel.h"

#include <cmath>
#include <algorithm>
#include <cstring>
#include <vector>

#include "ldm/modules/flash_attention_simd.h"  // LDM_AVX2, exp2_ps, hsum
#include "ldm/modules/group_norm_nhwc_avx512.h"
#include "ldm/modules/group_norm_nhwc_common.h"
#include "ldm/modules/simd_bf16.h"

namespace ldm {
namespace {

using flash::exp2_ps;
using flash::hsum;
using simd::load8;
using simd::store1;
using simd::store8;
using simd::to_float;

constexpr int64_t kBlock = 2048;
constexpr float kLog2e = 1.4426950408889634f;

float sigmoid(float y) { return 1.0f / (1.0f + std::exp(-y)); }

LDM_AVX2 inline __m256 sigmoid8(__m256 y) {
  const __m256 e = exp2_ps(_mm256_mul_ps(y, _mm256_set1_ps(-kLog2e)));
  return _mm256_div_ps(_mm256_set1_ps(1.0f), _mm256_add_ps(_mm256_set1_ps(1.0f), e));
}

// sum of (x - c)^p over n values, p = 1 or 2
template <typename T>
LDM_AVX2 double centered_sum(const T* x, int64_t n, float c, int p) {
  double total = 0;
  const __m256 cv = _mm256_set1_ps(c);
  for (int64_t b0 = 0; b0 < n; b0 += kBlock) {
    const int64_t b1 = b0 + kBlock < n ? b0 + kBlock : n;
    __m256 acc = _mm256_setzero_ps();
    float tail = 0;
    int64_t i = b0;
    for (; i + 8 <= b1; i += 8) {
      const __m256 d = _mm256_sub_ps(load8(x + i), cv);
      acc = p == 1 ? _mm256_add_ps(acc, d) : _mm256_fmadd_ps(d, d, acc);
    }
    for (; i < b1; ++i) {
      const float d = to_float(x[i]) - c;
      tail += p == 1 ? d : d * d;
    }
    total += double(hsum(acc)) + tail;
  }
  return total;
}

template <typename T>
LDM_AVX2 void forward_avx2(const T* x, const float* w, const float* b, T* y, int64_t channels,
                           int64_t hw, float eps, bool silu, float* mean, float* rstd) {
  const int64_t m = channels * hw;
  const float mu = float(centered_sum(x, m, 0.0f, 1) / double(m));
  const float r = float(1.0 / std::sqrt(centered_sum(x, m, mu, 2) / double(m) + double(eps)));
  *mean = mu;
  *rstd = r;
  for (int64_t c = 0; c < channels; ++c) {
    const float scale = r * w[c], shift = b[c] - mu * scale;
    const __m256 sv = _mm256_set1_ps(scale), hv = _mm256_set1_ps(shift);
    const T* xr = x + c * hw;
    T* yr = y + c * hw;
    int64_t i = 0;
    for (; i + 8 <= hw; i += 8) {
      __m256 v = _mm256_fmadd_ps(load8(xr + i), sv, hv);
      if (silu) v = _mm256_mul_ps(v, sigmoid8(v));
      store8(yr + i, v);
    }
    for (; i < hw; ++i) {
      float v = to_float(xr[i]) * scale + shift;
      store1(&yr[i], silu ? v * sigmoid(v) : v);
    }
  }
}

// g = dy * silu'(y) with silu'(y) = s (1 + y (1 - s)), s = sigmoid(y)
LDM_AVX2 inline __m256 silu_grad8(__m256 dy, __m256 y) {
  const __m256 s = sigmoid8(y), one = _mm256_set1_ps(1.0f);
  return _mm256_mul_ps(dy, _mm256_mul_ps(s, _mm256_fmadd_ps(y, _mm256_sub_ps(one, s), one)));
}

// One channel: g into gr, and returns sum(g), sum(g * xhat) through sg, sgx.
template <typename T>
LDM_AVX2 void channel_grad(const T* xr, const T* dyr, int64_t hw, float scale, float shift, float mean,
                           float rstd, bool silu, float* gr, double* sg, double* sgx) {
  const __m256 sv = _mm256_set1_ps(scale), hv = _mm256_set1_ps(shift), mv = _mm256_set1_ps(mean),
               rv = _mm256_set1_ps(rstd);
  for (int64_t b0 = 0; b0 < hw; b0 += kBlock) {
    const int64_t b1 = b0 + kBlock < hw ? b0 + kBlock : hw;
    __m256 a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps();
    float t1 = 0, t2 = 0;
    int64_t i = b0;
    for (; i + 8 <= b1; i += 8) {
      const __m256 xv = load8(xr + i);
      __m256 g = load8(dyr + i);
      if (silu) g = silu_grad8(g, _mm256_fmadd_ps(xv, sv, hv));
      _mm256_storeu_ps(gr + i, g);
      a1 = _mm256_add_ps(a1, g);
      a2 = _mm256_fmadd_ps(g, _mm256_mul_ps(_mm256_sub_ps(xv, mv), rv), a2);
    }
    for (; i < b1; ++i) {
      const float xv = to_float(xr[i]), y = xv * scale + shift;
      float g = to_float(dyr[i]);
      if (silu) {
        const float s = sigmoid(y);
        g *= s * (1.0f + y * (1.0f - s));
      }
      gr[i] = g;
      t1 += g;
      t2 += g * (xv - mean) * rstd;
    }
    *sg += double(hsum(a1)) + t1;
    *sgx += double(hsum(a2)) + t2;
  }
}

template <typename T>
LDM_AVX2 void backward_avx2(const T* x, const T* dy, const float* w, const float* b, int64_t channels, int64_t hw,
                            float mean, float rstd, bool silu, T* dx, float* dw, float* db,
                            float* scratch) {
  double a = 0, bsum = 0;  // sum over the group of w * g and of w * g * xhat
  for (int64_t c = 0; c < channels; ++c) {
    const float scale = rstd * w[c], shift = b[c] - mean * scale;
    double sg = 0, sgx = 0;
    channel_grad(x + c * hw, dy + c * hw, hw, scale, shift, mean, rstd, silu, scratch + c * hw, &sg, &sgx);
    db[c] = float(sg);
    dw[c] = float(sgx);
    a += w[c] * sg;
    bsum += w[c] * sgx;
  }
  // dx = rstd (w g - (A + xhat B) / m): the norm's gradient (Wu & He 2018, as LayerNorm's)
  const int64_t m = channels * hw;
  const float am = float(a / double(m)), bm = float(bsum / double(m));
  const __m256 mv = _mm256_set1_ps(mean), rv = _mm256_set1_ps(rstd), av = _mm256_set1_ps(am),
               bv = _mm256_set1_ps(bm);
  for (int64_t c = 0; c < channels; ++c) {
    const __m256 wv = _mm256_set1_ps(w[c]);
    const T* xr = x + c * hw;
    const float* gr = scratch + c * hw;
    T* dr = dx + c * hw;
    int64_t i = 0;
    for (; i + 8 <= hw; i += 8) {
      const __m256 xhat = _mm256_mul_ps(_mm256_sub_ps(load8(xr + i), mv), rv);
      const __m256 inner = _mm256_sub_ps(_mm256_mul_ps(wv, _mm256_loadu_ps(gr + i)), _mm256_fmadd_ps(xhat, bv, av));
      store8(dr + i, _mm256_mul_ps(rv, inner));
    }
    for (; i < hw; ++i) {
      const float xhat = (to_float(xr[i]) - mean) * rstd;
      store1(&dr[i], rstd * (w[c] * gr[i] - (am + xhat * bm)));
    }
  }
}

// Channels-last: one sample's hw rows of c channels. Statistics come from
// per-channel sums (float within kRows pixels, double across them), so every
// loop runs along the contiguous channels.
constexpr int64_t kRows = 256;

// acc[k] += f(x[p, k]) over the rows; f = x (p = 1) or (x - center[k])^2.
template <typename T>
LDM_AVX2 void channel_sums(const T* x, int64_t hw, int64_t c, const float* center, int p, double* out) {
  std::vector<float> acc(c);
  for (int64_t k = 0; k < c; ++k) out[k] = 0;
  for (int64_t r0 = 0; r0 < hw; r0 += kRows) {
    std::fill(acc.begin(), acc.end(), 0.0f);
    const int64_t r1 = r0 + kRows < hw ? r0 + kRows : hw;
    for (int64_t r = r0; r < r1; ++r) {
      const T* xr = x + r * c;
      int64_t k = 0;
      for (; k + 8 <= c; k += 8) {
        __m256 v = load8(xr + k);
        if (p == 2) v = _mm256_sub_ps(v, _mm256_loadu_ps(center + k));
        _mm256_storeu_ps(acc.data() + k, p == 1 ? _mm256_add_ps(_mm256_loadu_ps(acc.data() + k), v)
                                                : _mm256_fmadd_ps(v, v, _mm256_loadu_ps(acc.data() + k)));
      }
      for (; k < c; ++k) {
        const float v = to_float(xr[k]) - (p == 2 ? center[k] : 0.0f);
        acc[k] += p == 1 ? v : v * v;
      }
    }
    for (int64_t k = 0; k < c; ++k) out[k] += acc[k];
  }
}

template <typename T>
LDM_AVX2 void forward_nhwc_avx2(const T* x, const float* w, const float* b, T* y, int64_t hw, int64_t c,
                                int64_t groups, float eps, bool silu, float* mean, float* rstd) {
  const gn::ChannelStats st = gn::nhwc_stats(
      [&](const float* center, int p, double* out) { channel_sums(x, hw, c, center, p, out); }, hw, c, groups, eps,
      mean, rstd);
  std::vector<float> scale(c), shift(c);
  for (int64_t k = 0; k < c; ++k) scale[k] = st.rstd[k] * w[k], shift[k] = b[k] - st.mean[k] * scale[k];
  for (int64_t r = 0; r < hw; ++r) {
    const T* xr = x + r * c;
    T* yr = y + r * c;
    int64_t k = 0;
    for (; k + 8 <= c; k += 8) {
      __m256 v = _mm256_fmadd_ps(load8(xr + k), _mm256_loadu_ps(scale.data() + k), _mm256_loadu_ps(shift.data() + k));
      if (silu) v = _mm256_mul_ps(v, sigmoid8(v));
      store8(yr + k, v);
    }
    for (; k < c; ++k) {
      const float v = to_float(xr[k]) * scale[k] + shift[k];
      store1(&yr[k], silu ? v * sigmoid(v) : v);
    }
  }
}

template <typename T>
LDM_AVX2 void backward_nhwc_avx2(const T* x, const T* dy, const float* w, const float* b, int64_t hw, int64_t c,
                                 int64_t groups, const float* mean, const float* rstd, bool silu, T* dx, float* dw,
                                 float* db, float* scratch) {
  const int64_t cg = c / groups;
  std::vector<float> mc(c), rc(c), scale(c), shift(c), a1(c), a2(c);
  for (int64_t k = 0; k < c; ++k) {
    mc[k] = mean[k / cg], rc[k] = rstd[k / cg];
    scale[k] = rc[k] * w[k], shift[k] = b[k] - mc[k] * scale[k];
  }
  std::vector<double> sg(c, 0.0), sgx(c, 0.0);
  // g (through the SiLU) into scratch, and per channel sum(g), sum(g xhat)
  for (int64_t r0 = 0; r0 < hw; r0 += kRows) {
    std::fill(a1.begin(), a1.end(), 0.0f);
    std::fill(a2.begin(), a2.end(), 0.0f);
    const int64_t r1 = r0 + kRows < hw ? r0 + kRows : hw;
    for (int64_t r = r0; r < r1; ++r) {
      const T *xr = x + r * c, *dr = dy + r * c;
      float* gr = scratch + r * c;
      int64_t k = 0;
      for (; k + 8 <= c; k += 8) {
        const __m256 xv = load8(xr + k);
        __m256 g = load8(dr + k);
        if (silu) g = silu_grad8(g, _mm256_fmadd_ps(xv, _mm256_loadu_ps(&scale[k]), _mm256_loadu_ps(&shift[k])));
        _mm256_storeu_ps(gr + k, g);
        const __m256 xhat = _mm256_mul_ps(_mm256_sub_ps(xv, _mm256_loadu_ps(&mc[k])), _mm256_loadu_ps(&rc[k]));
        _mm256_storeu_ps(&a1[k], _mm256_add_ps(_mm256_loadu_ps(&a1[k]), g));
        _mm256_storeu_ps(&a2[k], _mm256_fmadd_ps(g, xhat, _mm256_loadu_ps(&a2[k])));
      }
      for (; k < c; ++k) {
        const float xv = to_float(xr[k]), yv = xv * scale[k] + shift[k];
        float g = to_float(dr[k]);
        if (silu) {
          const float s = sigmoid(yv);
          g *= s * (1.0f + yv * (1.0f - s));
        }
        gr[k] = g;
        a1[k] += g;
        a2[k] += g * (xv - mc[k]) * rc[k];
      }
    }
    for (int64_t k = 0; k < c; ++k) sg[k] += a1[k], sgx[k] += a2[k];
  }
  // dx = rstd (w g - (A + xhat B) / m) per group, as backward_avx2
  std::vector<float> am, bm;
  gn::nhwc_grad_terms(w, sg, sgx, hw, c, groups, dw, db, am, bm);
  for (int64_t r = 0; r < hw; ++r) {
    const T* xr = x + r * c;
    const float* gr = scratch + r * c;
    T* o = dx + r * c;
    int64_t k = 0;
    for (; k + 8 <= c; k += 8) {
      const __m256 rv = _mm256_loadu_ps(&rc[k]);
      const __m256 xhat = _mm256_mul_ps(_mm256_sub_ps(load8(xr + k), _mm256_loadu_ps(&mc[k])), rv);
      const __m256 inner = _mm256_sub_ps(_mm256_mul_ps(_mm256_loadu_ps(w + k), _mm256_loadu_ps(gr + k)),
                                         _mm256_fmadd_ps(xhat, _mm256_loadu_ps(&bm[k]), _mm256_loadu_ps(&am[k])));
      store8(o + k, _mm256_mul_ps(rv, inner));
    }
    for (; k < c; ++k) {
      const float xhat = (to_float(xr[k]) - mc[k]) * rc[k];
      store1(&o[k], rc[k] * (w[k] * gr[k] - (am[k] + xhat * bm[k])));
    }
  }
}

}  // namespace

bool group_norm_kernel_available() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
}

void group_norm_kernel_forward(const uint16_t* x, const float* w, const float* b, uint16_t* y, int64_t channels,
                               int64_t hw, float eps, bool silu, float* mean, float* rstd) {
  forward_avx2(x, w, b, y, channels, hw, eps, silu, mean, rstd);
}
void group_norm_kernel_forward(const float* x, const float* w, const float* b, float* y, int64_t channels,
                               int64_t hw, float eps, bool silu, float* mean, float* rstd) {
  forward_avx2(x, w, b, y, channels, hw, eps, silu, mean, rstd);
}

void group_norm_kernel_backward(const uint16_t* x, const uint16_t* dy, const float* w, const float* b,
                                int64_t channels, int64_t hw, float mean, float rstd, bool silu, uint16_t* dx,
                                float* dw, float* db, float* scratch) {
  backward_avx2(x, dy, w, b, channels, hw, mean, rstd, silu, dx, dw, db, scratch);
}
void group_norm_kernel_backward(const float* x, const float* dy, const float* w, const float* b, int64_t channels,
                                int64_t hw, float mean, float rstd, bool silu, float* dx, float* dw, float* db,
                                float* scratch) {
  backward_avx2(x, dy, w, b, channels, hw, mean, rstd, silu, dx, dw, db, scratch);
}

void group_norm_kernel_forward_nhwc(const uint16_t* x, const float* w, const float* b, uint16_t* y, int64_t hw,
                                    int64_t c, int64_t groups, float eps, bool silu, float* mean, float* rstd) {
  if (group_norm_nhwc_avx512_applies(c))
    return group_norm_nhwc_avx512_forward(x, w, b, y, hw, c, groups, eps, silu, mean, rstd);
  forward_nhwc_avx2(x, w, b, y, hw, c, groups, eps, silu, mean, rstd);
}
void group_norm_kernel_forward_nhwc(const float* x, const float* w, const float* b, float* y, int64_t hw, int64_t c,
                                    int64_t groups, float eps, bool silu, float* mean, float* rstd) {
  if (group_norm_nhwc_avx512_applies(c))
    return group_norm_nhwc_avx512_forward(x, w, b, y, hw, c, groups, eps, silu, mean, rstd);
  forward_nhwc_avx2(x, w, b, y, hw, c, groups, eps, silu, mean, rstd);
}

void group_norm_kernel_backward_nhwc(const uint16_t* x, const uint16_t* dy, const float* w, const float* b,
                                     int64_t hw, int64_t c, int64_t groups, const float* mean, const float* rstd,
                                     bool silu, uint16_t* dx, float* dw, float* db, float* scratch) {
  if (group_norm_nhwc_avx512_applies(c))
    return group_norm_nhwc_avx512_backward(x, dy, w, b, hw, c, groups, mean, rstd, silu, dx, dw, db, scratch);
  backward_nhwc_avx2(x, dy, w, b, hw, c, groups, mean, rstd, silu, dx, dw, db, scratch);
}
void group_norm_kernel_backward_nhwc(const float* x, const float* dy, const float* w, const float* b, int64_t hw,
                                     int64_t c, int64_t groups, const float* mean, const float* rstd, bool silu,
                                     float* dx, float* dw, float* db, float* scratch) {
  if (group_norm_nhwc_avx512_applies(c))
    return group_norm_nhwc_avx512_backward(x, dy, w, b, hw, c, groups, mean, rstd, silu, dx, dw, db, scratch);
  backward_nhwc_avx2(x, dy, w, b, hw, c, groups, mean, rstd, silu, dx, dw, db, scratch);
}

}  // namespace ldm

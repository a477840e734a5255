// The float32 fused attention kernel in AVX-512: flash_attention_kernel.cpp's
// tiling, data layout and online softmax with 16 lanes and 32 registers, so a
// score tile is 12 rows x 32 keys and an output tile 6 rows x 64 columns. A
// CPU that splits 512-bit FMAs in two (Zen 4) gains in instructions per FLOP
// (broadcasts, loads, the softmax's passes), not in FLOP rate.
#include "ldm/modules/flash_attention_kernel.h"
#include "ldm/modules/flash_attention_simd.h"

namespace ldm {

namespace {
using namespace flash;

// online_softmax of flash_attention_simd.h (kb a multiple of 16).
LDM_AVX512 void online_softmax16(float* s, int64_t rows, int64_t lds, int64_t kb, int64_t valid, float* m, float* l,
                                 float* o, int64_t d) {
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
      const __m512 e = exp2_ps16(_mm512_sub_ps(_mm512_loadu_ps(row + j), mv));
      _mm512_storeu_ps(row + j, e);
      sum = _mm512_add_ps(sum, e);
    }
    l[i] = l[i] * alpha + _mm512_reduce_add_ps(sum);
    m[i] = m_new;
    rescale_row(o + i * d, d, alpha);
  }
}

// s[R x 16P] = q[R x d] k^T for P consecutive 16-key panels ([d][16] each).
template <int R, int P>
LDM_AVX512 inline void qk_tile(const float* q, int64_t d, const float* kt, float* s, int64_t lds) {
  __m512 acc[R][P];
#pragma GCC unroll 12
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 2
    for (int p = 0; p < P; ++p) acc[r][p] = _mm512_setzero_ps();
  for (int64_t c = 0; c < d; ++c) {
    __m512 b[P];
#pragma GCC unroll 2
    for (int p = 0; p < P; ++p) b[p] = _mm512_loadu_ps(kt + p * 16 * d + c * 16);
#pragma GCC unroll 12
    for (int r = 0; r < R; ++r) {
      const __m512 a = _mm512_set1_ps(q[r * d + c]);
#pragma GCC unroll 2
      for (int p = 0; p < P; ++p) acc[r][p] = _mm512_fmadd_ps(a, b[p], acc[r][p]);
    }
  }
#pragma GCC unroll 12
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 2
    for (int p = 0; p < P; ++p) _mm512_storeu_ps(s + r * lds + 16 * p, acc[r][p]);
}

// o[R x (16W + 8T)] += p[R x kb] v[kb x ...]: W columns of 16 and, when T, a
// last 8 (head sizes are multiples of 8: 40 = 16 + 16 + 8).
template <int R, int W, bool T>
LDM_AVX512 inline void pv_tile(const float* p, int64_t ldp, const float* v, int64_t d, int64_t kb, float* o) {
  __m512 acc[R][W > 0 ? W : 1];
  __m256 tail[R];
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int w = 0; w < W; ++w) acc[r][w] = _mm512_loadu_ps(o + r * d + 16 * w);
    if (T) tail[r] = _mm256_loadu_ps(o + r * d + 16 * W);
  }
  for (int64_t j = 0; j < kb; ++j) {
    __m512 b[W > 0 ? W : 1];
#pragma GCC unroll 4
    for (int w = 0; w < W; ++w) b[w] = _mm512_loadu_ps(v + j * d + 16 * w);
    const __m256 bt = T ? _mm256_loadu_ps(v + j * d + 16 * W) : _mm256_setzero_ps();
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) {
      const float pr = p[r * ldp + j];
#pragma GCC unroll 4
      for (int w = 0; w < W; ++w) acc[r][w] = _mm512_fmadd_ps(_mm512_set1_ps(pr), b[w], acc[r][w]);
      if (T) tail[r] = _mm256_fmadd_ps(_mm256_set1_ps(pr), bt, tail[r]);
    }
  }
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int w = 0; w < W; ++w) _mm512_storeu_ps(o + r * d + 16 * w, acc[r][w]);
    if (T) _mm256_storeu_ps(o + r * d + 16 * W, tail[r]);
  }
}

struct Tiles {
  template <int R, int P>
  LDM_AVX512 static void qk(const float* q, int64_t d, const float* kt, float* s, int64_t lds) {
    qk_tile<R, P>(q, d, kt, s, lds);
  }
  template <int R, int W, bool T>
  LDM_AVX512 static void pv(const float* p, int64_t ldp, const float* v, int64_t d, int64_t kb, float* o) {
    pv_tile<R, W, T>(p, ldp, v, d, kb, o);
  }
};
using Blocks = Blocks16<Tiles, float, 1>;

}  // namespace

bool flash_attention_avx512_available() {
  return flash_attention_available() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw");
}

LDM_AVX512 void flash_attention_rows_avx512(const float* q, const float* kt, const float* v, float* out, int64_t ldo,
                                            int64_t r0, int64_t r1, int64_t M, int64_t Mp, int64_t d, float* scratch) {
  attention_rows_f32(q, kt, v, out, ldo, r0, r1, M, Mp, d, scratch, Blocks::qk_block, online_softmax16, Blocks::pv_block);
}

}  // namespace ldm

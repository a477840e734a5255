// The fused attention kernel in bf16: the float32 kernels' tiling and online
// softmax (flash_attention_simd.h; the tiles of flash_attention_avx512.cpp),
// with both products on AVX512-BF16's VDPBF16PS (pairs of bf16 multiplied and
// summed into float32 lanes, twice the FLOPs per instruction of an FMA).
// Scores, softmax and the output accumulator stay float32; the probabilities
// are rounded to bf16 for p v.
#include <cstring>

#include "ldm/modules/flash_attention_kernel.h"
#include "ldm/modules/flash_attention_bf16_softmax.h"
#include "ldm/modules/flash_attention_simd.h"

namespace ldm {

namespace {
using namespace flash;

// Two bf16 at p as one 32-bit lane, repeated in all lanes.
LDM_BF16 inline __m512bh pair_bcast(const uint16_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return (__m512bh)_mm512_set1_epi32(v);
}
LDM_BF16 inline __m256bh pair_bcast8(const uint16_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return (__m256bh)_mm256_set1_epi32(v);
}

// s[R x 16P] = q[R x d] k^T for P consecutive 16-key panels, each stored
// [d / 2][16][2]: a dimension pair of 16 keys per 32 bf16 (one register).
template <int R, int P>
LDM_BF16 inline void qk_tile(const uint16_t* q, int64_t d, const uint16_t* kt, float* s, int64_t lds) {
  __m512 acc[R][P];
#pragma GCC unroll 12
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 2
    for (int p = 0; p < P; ++p) acc[r][p] = _mm512_setzero_ps();
  for (int64_t c = 0; c < d; c += 2) {
    __m512bh b[P];
#pragma GCC unroll 2
    for (int p = 0; p < P; ++p) b[p] = (__m512bh)_mm512_loadu_si512(kt + p * 16 * d + c * 16);
#pragma GCC unroll 12
    for (int r = 0; r < R; ++r) {
      const __m512bh a = pair_bcast(q + r * d + c);
#pragma GCC unroll 2
      for (int p = 0; p < P; ++p) acc[r][p] = _mm512_dpbf16_ps(acc[r][p], a, b[p]);
    }
  }
#pragma GCC unroll 12
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 2
    for (int p = 0; p < P; ++p) _mm512_storeu_ps(s + r * lds + 16 * p, acc[r][p]);
}

// o[R x (16W + 8T)] += p[R x kb] v for values stored in key pairs
// [kb / 2][d][2] (v at this tile's first column pair; o's rows d apart): W
// columns of 16 and, when T, a last 8.
template <int R, int W, bool T>
LDM_BF16 inline void pv_tile(const uint16_t* p, int64_t ldp, const uint16_t* v, int64_t d, int64_t kb, float* o) {
  __m512 acc[R][W > 0 ? W : 1];
  __m256 tail[R];
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int w = 0; w < W; ++w) acc[r][w] = _mm512_loadu_ps(o + r * d + 16 * w);
    if (T) tail[r] = _mm256_loadu_ps(o + r * d + 16 * W);
  }
  for (int64_t j = 0; j < kb; j += 2) {
    __m512bh b[W > 0 ? W : 1];
#pragma GCC unroll 4
    for (int w = 0; w < W; ++w) b[w] = (__m512bh)_mm512_loadu_si512(v + j * d + 32 * w);
    const __m256bh bt = T ? (__m256bh)_mm256_loadu_si256((const __m256i*)(v + j * d + 32 * W)) : __m256bh{};
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
      for (int w = 0; w < W; ++w) acc[r][w] = _mm512_dpbf16_ps(acc[r][w], pair_bcast(p + r * ldp + j), b[w]);
      if (T) tail[r] = _mm256_dpbf16_ps(tail[r], pair_bcast8(p + r * ldp + j), bt);
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
  LDM_BF16 static void qk(const uint16_t* q, int64_t d, const uint16_t* kt, float* s, int64_t lds) {
    qk_tile<R, P>(q, d, kt, s, lds);
  }
  template <int R, int W, bool T>
  LDM_BF16 static void pv(const uint16_t* p, int64_t ldp, const uint16_t* v, int64_t d, int64_t kb, float* o) {
    pv_tile<R, W, T>(p, ldp, v, d, kb, o);
  }
};
using Blocks = Blocks16<Tiles, uint16_t, 2>;

}  // namespace

bool flash_attention_bf16_available() {
  return flash_attention_available() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512bf16");
}

int64_t flash_attention_bf16_scratch(int64_t d) {
  return kQB * key_block(d) * 3 / 2 + kQB * d + 2 * kQB;  // scores, their bf16 copy, o, m, l (in floats)
}

LDM_BF16 void flash_attention_rows_bf16(const uint16_t* q, const uint16_t* kt, const uint16_t* v, uint16_t* out,
                                        int64_t ldo, int64_t r0, int64_t r1, int64_t M, int64_t Mp, int64_t d,
                                        float* scratch) {
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
      Blocks::qk_block(q + i0 * d, rows, d, kt + j0 * d, kb, s, kb_max);
      online_softmax_bf16(s, rows, kb_max, kb, M - j0 < kb ? M - j0 : kb, m, l, o, d, p);
      Blocks::pv_block(p, rows, kb_max, v + j0 * d, d, kb, o);
    }
    for (int64_t i = 0; i < rows; ++i) {
      const __m256 inv = _mm256_set1_ps(1.0f / l[i]);
      for (int64_t c = 0; c < d; c += 8)
        store_bf16(out + (i0 + i) * ldo + c, _mm256_mul_ps(_mm256_loadu_ps(o + i * d + c), inv));
    }
  }
}

}  // namespace ldm

// What the float32 and bf16 fused attention kernels share: the tiling
// constants, AVX2 (and 16-lane) exp2, max/sum, the online softmax over float32 scores and the
// float32 kernels' loop. Internal to flash_attention_kernel.cpp,
// flash_attention_avx512.cpp and flash_attention_bf16.cpp, whose
// callers have checked the CPU (inline functions carry their own targets), and
// to the GroupNorm kernels (exp2, hsum).
#pragma once
#include <immintrin.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <utility>

// The build targets baseline x86-64: these functions carry AVX2/FMA
// themselves and run only where the kernels' *_available() say so.
#define LDM_AVX2 __attribute__((target("avx2,fma")))

namespace ldm::flash {

constexpr int64_t kQB = 48;  // query rows per block

// Key columns per block: a block's keys and values (2 x kb x d floats) stay in L2.
inline int64_t key_block(int64_t d) {
  const int64_t kb = (32768 / d) / 16 * 16;
  return kb < 16 ? 16 : (kb > 256 ? 256 : kb);
}

// The 512-bit kernels' block loops (float32: flash_attention_avx512.cpp,
// bf16: flash_attention_bf16.cpp), through tables of tile functions, one per
// row count. Score tiles: up to 12 rows x 32 keys (a last 16-key panel
// alone); output tiles: up to 6 rows x 64 columns, then the rest (8 to 56: W
// columns of 16 and maybe a last 8). Tiles: static qk<R, P> (P panels of 16
// keys) and pv<R, W, T>; E: the operands' element type; VS: v's elements per
// column (bf16 key pairs: 2). The tiles carry their own CPU targets.
template <class Tiles, class E, int VS>
struct Blocks16 {
  static constexpr int kQkRows = 12, kPvRows = 6;
  using QkFn = void (*)(const E*, int64_t, const E*, float*, int64_t);
  using PvFn = void (*)(const E*, int64_t, const E*, int64_t, int64_t, float*);
  template <int P, int... Rs>
  static constexpr std::array<QkFn, sizeof...(Rs)> qk_table(std::integer_sequence<int, Rs...>) {
    return {&Tiles::template qk<Rs + 1, P>...};
  }
  template <int W, bool T, int... Rs>
  static constexpr std::array<PvFn, sizeof...(Rs)> pv_table(std::integer_sequence<int, Rs...>) {
    return {&Tiles::template pv<Rs + 1, W, T>...};
  }

  // s[rows x kb] = q[rows x d] k^T; kb a multiple of 16.
  static void qk_block(const E* q, int64_t rows, int64_t d, const E* kt, int64_t kb, float* s, int64_t lds) {
    static constexpr auto two = qk_table<2>(std::make_integer_sequence<int, kQkRows>());
    static constexpr auto one = qk_table<1>(std::make_integer_sequence<int, kQkRows>());
    for (int64_t i = 0; i < rows; i += kQkRows) {
      const int64_t r = rows - i < kQkRows ? rows - i : kQkRows;
      int64_t j = 0;
      for (; j + 32 <= kb; j += 32) two[r - 1](q + i * d, d, kt + j * d, s + i * lds + j, lds);
      if (j < kb) one[r - 1](q + i * d, d, kt + j * d, s + i * lds + j, lds);
    }
  }

  // o[rows x d] += p[rows x kb] v[kb x d]
  static void pv_block(const E* p, int64_t rows, int64_t ldp, const E* v, int64_t d, int64_t kb, float* o) {
    using Rows = std::make_integer_sequence<int, kPvRows>;
    static constexpr auto w4 = pv_table<4, false>(Rows());
    static constexpr std::array<std::array<PvFn, kPvRows>, 8> rest = {
        std::array<PvFn, kPvRows>{},  // 0: nothing left
        pv_table<0, true>(Rows()),  pv_table<1, false>(Rows()), pv_table<1, true>(Rows()),
        pv_table<2, false>(Rows()), pv_table<2, true>(Rows()),  pv_table<3, false>(Rows()),
        pv_table<3, true>(Rows())};
    for (int64_t i = 0; i < rows; i += kPvRows) {
      const int64_t r = rows - i < kPvRows ? rows - i : kPvRows;
      int64_t c = 0;
      for (; c + 64 <= d; c += 64) w4[r - 1](p + i * ldp, ldp, v + VS * c, d, kb, o + i * d + c);
      if (c < d) rest[(d - c) / 8][r - 1](p + i * ldp, ldp, v + VS * c, d, kb, o + i * d + c);
    }
  }
};

// Cephes' exp2f polynomial for 2^f on [-0.5, 0.5], highest power first.
constexpr float kExp2Poly[7] = {1.535336188319500e-4f, 1.339887440266574e-3f, 9.618437357674640e-3f,
                                5.550332471162809e-2f, 2.402264791363012e-1f, 6.931472028550421e-1f, 1.0f};

// 2^x: Cephes' exp2f polynomial on [-0.5, 0.5] (relative error ~1e-7) times
// 2^round(x) built in the exponent bits. NaN passes through (max/min return
// their second operand for NaN).
LDM_AVX2 inline __m256 exp2_ps(__m256 x) {
  x = _mm256_max_ps(_mm256_set1_ps(-126.0f), x);
  x = _mm256_min_ps(_mm256_set1_ps(126.0f), x);
  const __m256 n = _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256 f = _mm256_sub_ps(x, n);
  __m256 p = _mm256_set1_ps(kExp2Poly[0]);
  for (int i = 1; i < 7; ++i) p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(kExp2Poly[i]));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

#define LDM_AVX512 __attribute__((target("avx512f,avx512dq,avx512vl,avx512bw,avx2,fma")))

// exp2_ps in 16 lanes (the same polynomial, range and NaN behaviour);
// VSCALEFPS puts 2^n in the exponent.
LDM_AVX512 inline __m512 exp2_ps16(__m512 x) {
  x = _mm512_max_ps(_mm512_set1_ps(-126.0f), x);
  x = _mm512_min_ps(_mm512_set1_ps(126.0f), x);
  const __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(x, n);
  __m512 p = _mm512_set1_ps(kExp2Poly[0]);
  for (int i = 1; i < 7; ++i) p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kExp2Poly[i]));
  return _mm512_scalef_ps(p, n);
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

// The online softmax (Milakov & Gimelshein 2018), per query row of a key
// block: the new running max m_new over the row's valid scores (columns from
// `valid` on are padding: set to -inf), then alpha = 2^(m_old - m_new) (0 on
// the first block, m_old = -inf) rescales the running sum and output row.
LDM_AVX2 inline float block_max(float* row, int64_t kb, int64_t valid, float m_old) {
  for (int64_t j = valid; j < kb; ++j) row[j] = -INFINITY;
  __m256 mx = _mm256_set1_ps(-INFINITY);
  for (int64_t j = 0; j < kb; j += 8) mx = _mm256_max_ps(mx, _mm256_loadu_ps(row + j));
  const float bm = hmax(mx);
  return bm > m_old ? bm : m_old;
}
LDM_AVX2 inline void rescale_row(float* o, int64_t d, float alpha) {
  if (alpha == 1.0f) return;
  const __m256 av = _mm256_set1_ps(alpha);
  for (int64_t c = 0; c < d; c += 8) _mm256_storeu_ps(o + c, _mm256_mul_ps(_mm256_loadu_ps(o + c), av));
}

// The block's scores become 2^(s - m_new) in place; l and o follow.
LDM_AVX2 inline void online_softmax(float* s, int64_t rows, int64_t lds, int64_t kb, int64_t valid, float* m, float* l,
                                    float* o, int64_t d) {
  for (int64_t i = 0; i < rows; ++i) {
    float* row = s + i * lds;
    const float m_new = block_max(row, kb, valid, m[i]);
    const float alpha = std::exp2(m[i] - m_new);
    const __m256 mv = _mm256_set1_ps(m_new);
    __m256 sum = _mm256_setzero_ps();
    for (int64_t j = 0; j < kb; j += 8) {
      const __m256 e = exp2_ps(_mm256_sub_ps(_mm256_loadu_ps(row + j), mv));
      _mm256_storeu_ps(row + j, e);
      sum = _mm256_add_ps(sum, e);
    }
    l[i] = l[i] * alpha + hsum(sum);
    m[i] = m_new;
    rescale_row(o + i * d, d, alpha);
  }
}

// The float32 kernels' outer loop (flash_attention_rows and its AVX-512 twin):
// blocks of kQB query rows against blocks of keys (scores, online softmax,
// p v), then each row divided by its sum into out's rows, ldo apart. qk,
// softmax, pv: the block steps, with the signatures of the AVX2 kernel's
// qk_block, online_softmax, pv_block.
template <class Qk, class Softmax, class Pv>
LDM_AVX2 inline void attention_rows_f32(const float* q, const float* kt, const float* v, float* out, int64_t ldo,
                                        int64_t r0, int64_t r1, int64_t M, int64_t Mp, int64_t d, float* scratch, Qk qk,
                                        Softmax softmax, Pv pv) {
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
      qk(q + i0 * d, rows, d, kt + j0 * d, kb, s, kb_max);
      softmax(s, rows, kb_max, kb, M - j0 < kb ? M - j0 : kb, m, l, o, d);
      pv(s, rows, kb_max, v + j0 * d, d, kb, o);
    }
    for (int64_t i = 0; i < rows; ++i) {
      const __m256 inv = _mm256_set1_ps(1.0f / l[i]);
      for (int64_t c = 0; c < d; c += 8)
        _mm256_storeu_ps(out + (i0 + i) * ldo + c, _mm256_mul_ps(_mm256_loadu_ps(o + i * d + c), inv));
    }
  }
}
}  // namespace ldm::flash

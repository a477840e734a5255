// The fused attention kernel on AMX (Intel's tile unit, Sapphire Rapids on):
// FlashAttention's blocks and online softmax (Dao et al. 2022) with q k^T and
// p v as TDPBF16PS tile products (16 x 16 float32 accumulators, 32 bf16 of
// depth per instruction) and the softmax in AVX-512 between them
// (flash_attention_bf16_softmax.h). On AMX machines the AVX512-BF16 kernel
// runs at ~11% of oneDNN's bf16 GEMM peak and slower than the float32 one
// (2026-12-03: 147 against 207 GFLOP/s for 16 x 4096 x 40).
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstring>

#include "ldm/modules/flash_attention_bf16_softmax.h"
#include "ldm/modules/flash_attention_kernel.h"

#define LDM_AMX __attribute__((target("amx-tile,amx-bf16,avx512bf16,avx512vl,avx512bw,avx512f,avx2,fma")))

namespace ldm {

namespace {
using namespace flash;

constexpr int64_t kRows = 32;   // query rows per block (two row tiles)
constexpr int64_t kKeys = 256;  // keys per block: scores and probabilities 48 KB, about L1

// Palette 1, all eight tiles 16 rows of 64 bytes: tmm0-3 accumulators,
// tmm4-5 left operands, tmm6-7 right operands.
struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
  TileConfig() {
    for (int t = 0; t < 8; ++t) colsb[t] = 64, rows[t] = 16;
  }
};

// s[32 x 32] (rows lds apart) = q[32 x dq] k^T for the two 16-key panels at
// kt ([dq / 2][16][2] each): 2 x 2 tiles, dq / 32 steps of depth.
LDM_AMX inline void qk_2x2(const uint16_t* q, int64_t dq, const uint16_t* kt, float* s, int64_t lds) {
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  for (int64_t c = 0; c < dq; c += 32) {
    _tile_loadd(4, q + c, dq * 2);
    _tile_loadd(5, q + 16 * dq + c, dq * 2);
    _tile_loadd(6, kt + c * 16, 64);
    _tile_loadd(7, kt + 16 * dq + c * 16, 64);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  _tile_stored(0, s, lds * 4);
  _tile_stored(1, s + 16, lds * 4);
  _tile_stored(2, s + 16 * lds, lds * 4);
  _tile_stored(3, s + 16 * lds + 16, lds * 4);
}

// The same for one row tile: s[16 x 32].
LDM_AMX inline void qk_1x2(const uint16_t* q, int64_t dq, const uint16_t* kt, float* s, int64_t lds) {
  _tile_zero(0);
  _tile_zero(1);
  for (int64_t c = 0; c < dq; c += 32) {
    _tile_loadd(4, q + c, dq * 2);
    _tile_loadd(6, kt + c * 16, 64);
    _tile_loadd(7, kt + 16 * dq + c * 16, 64);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
  }
  _tile_stored(0, s, lds * 4);
  _tile_stored(1, s + 16, lds * 4);
}

// o[16 x 16n] (rows dv apart, n <= 4 column tiles from column c0) += p[16 x
// kb] (rows ldp apart) v, v in key pairs [kb / 2][dv][2].
template <int n>
LDM_AMX inline void pv_cols(const uint16_t* p, int64_t ldp, const uint16_t* v, int64_t dv, int64_t kb, float* o) {
  _tile_loadd(0, o, dv * 4);
  if (n > 1) _tile_loadd(1, o + 16, dv * 4);
  if (n > 2) _tile_loadd(2, o + 32, dv * 4);
  if (n > 3) _tile_loadd(3, o + 48, dv * 4);
  for (int64_t j = 0; j < kb; j += 32) {
    const uint16_t* vj = v + j * dv;  // key pair j / 2
    _tile_loadd(4, p + j, ldp * 2);
    _tile_loadd(6, vj, dv * 4);
    _tile_dpbf16ps(0, 4, 6);
    if (n > 1) {
      _tile_loadd(7, vj + 32, dv * 4);
      _tile_dpbf16ps(1, 4, 7);
    }
    if (n > 2) {
      _tile_loadd(6, vj + 64, dv * 4);
      _tile_dpbf16ps(2, 4, 6);
    }
    if (n > 3) {
      _tile_loadd(7, vj + 96, dv * 4);
      _tile_dpbf16ps(3, 4, 7);
    }
  }
  _tile_stored(0, o, dv * 4);
  if (n > 1) _tile_stored(1, o + 16, dv * 4);
  if (n > 2) _tile_stored(2, o + 32, dv * 4);
  if (n > 3) _tile_stored(3, o + 48, dv * 4);
}

LDM_AMX void pv_block(const uint16_t* p, int64_t ldp, int64_t tiles, const uint16_t* v, int64_t dv, int64_t kb,
                      float* o) {
  for (int64_t t = 0; t < tiles; ++t) {
    const uint16_t* pt = p + t * 16 * ldp;
    float* ot = o + t * 16 * dv;
    int64_t c = 0;
    for (; c + 64 <= dv; c += 64) pv_cols<4>(pt, ldp, v + 2 * c, dv, kb, ot + c);
    switch ((dv - c) / 16) {
      case 3: pv_cols<3>(pt, ldp, v + 2 * c, dv, kb, ot + c); break;
      case 2: pv_cols<2>(pt, ldp, v + 2 * c, dv, kb, ot + c); break;
      case 1: pv_cols<1>(pt, ldp, v + 2 * c, dv, kb, ot + c); break;
      default: break;
    }
  }
}

// Asks Linux for the tile state (once per process; AMX faults without it).
bool tile_permission() {
  constexpr long kReqXcompPerm = 0x1023, kXtileData = 18;
  return syscall(SYS_arch_prctl, kReqXcompPerm, kXtileData) == 0;
}
}  // namespace

bool flash_attention_amx_available() {
  static const bool ok = flash_attention_bf16_available() && __builtin_cpu_supports("amx-tile") &&
                         __builtin_cpu_supports("amx-bf16") && tile_permission();
  return ok;
}

int64_t flash_attention_amx_scratch(int64_t d) {
  const int64_t dq = (d + 31) / 32 * 32, dv = (d + 15) / 16 * 16;
  // scores, their bf16 copy, o, m, l, and a padded copy of a last part tile of q (in floats)
  return kRows * kKeys * 3 / 2 + kRows * dv + 2 * kRows + 16 * dq / 2 + 16;
}

LDM_AMX void flash_attention_rows_amx(const uint16_t* q, const uint16_t* kt, const uint16_t* v, uint16_t* out,
                                      int64_t ldo, int64_t r0, int64_t r1, int64_t M, int64_t Mp, int64_t d,
                                      float* scratch) {
  const int64_t dq = (d + 31) / 32 * 32, dv = (d + 15) / 16 * 16;
  float* s = scratch;
  uint16_t* p = reinterpret_cast<uint16_t*>(s + kRows * kKeys);
  float* o = s + kRows * kKeys * 3 / 2;
  float* m = o + kRows * dv;
  float* l = m + kRows;
  uint16_t* qpad = reinterpret_cast<uint16_t*>(l + kRows);
  TileConfig cfg;
  _tile_loadconfig(&cfg);
  for (int64_t i0 = r0; i0 < r1; i0 += kRows) {
    const int64_t rows = r1 - i0 < kRows ? r1 - i0 : kRows, tiles = (rows + 15) / 16;
    for (int64_t i = 0; i < tiles * 16; ++i) m[i] = -INFINITY, l[i] = 0.0f;
    std::memset(o, 0, sizeof(float) * tiles * 16 * dv);
    // a tile reads 16 rows of q: a last part tile comes from a zero-padded copy
    const uint16_t* qrow[kRows / 16];
    for (int64_t t = 0; t < tiles; ++t) qrow[t] = q + (i0 + 16 * t) * dq;
    if (rows % 16) {
      std::memset(qpad, 0, 2 * 16 * dq);
      std::memcpy(qpad, qrow[tiles - 1], 2 * (rows % 16) * dq);
      qrow[tiles - 1] = qpad;
    }
    for (int64_t j0 = 0; j0 < Mp; j0 += kKeys) {
      const int64_t kb = Mp - j0 < kKeys ? Mp - j0 : kKeys;
      for (int64_t j = 0; j < kb; j += 32) {
        const uint16_t* kp = kt + (j0 + j) * dq;
        int64_t t = 0;
        // two row tiles share the key tiles where they are consecutive rows of q
        for (; t + 1 < tiles && qrow[t + 1] == qrow[t] + 16 * dq; t += 2) qk_2x2(qrow[t], dq, kp, s + t * 16 * kKeys + j, kKeys);
        for (; t < tiles; ++t) qk_1x2(qrow[t], dq, kp, s + t * 16 * kKeys + j, kKeys);
      }
      online_softmax_bf16(s, tiles * 16, kKeys, kb, M - j0 < kb ? M - j0 : kb, m, l, o, dv, p);
      pv_block(p, kKeys, tiles, v + j0 * dv, dv, kb, o);
    }
    for (int64_t i = 0; i < rows; ++i) {
      const __m256 inv = _mm256_set1_ps(1.0f / l[i]);
      for (int64_t c = 0; c < d; c += 8)
        store_bf16(out + (i0 + i) * ldo + c, _mm256_mul_ps(_mm256_loadu_ps(o + i * dv + c), inv));
    }
  }
  _tile_release();
}

}  // namespace ldm

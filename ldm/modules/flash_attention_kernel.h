// The fused CPU attention kernel (FlashAttention's tiling, Dao et al. 2022:
// query tiles against key tiles with an online softmax, so no N x M score
// matrix exists). Its own file, free of libtorch headers, built for the
// baseline with AVX2/FMA functions chosen at run time.
#pragma once
#include <cstdint>

namespace ldm {

// True when this CPU runs the kernel (AVX2 and FMA).
bool flash_attention_available();
// Floats of scratch one thread needs for head size d.
int64_t flash_attention_scratch(int64_t d);
// out[i] = softmax_2(q[i] k^T) v for query rows [r0, r1) of one head, where
// softmax_2 uses base 2 (q comes scaled by scale * log2(e)). q: [N, d]; out:
// N rows of d, ldo apart (a head's columns of [N, heads * d]: ldo = heads * d);
// kt: [Mp / 16, d, 16], the keys in panels of 16 transposed; v: [Mp, d];
// Mp = M rounded up to 16, the padding zeros. d must be a multiple of 8.
void flash_attention_rows(const float* q, const float* kt, const float* v, float* out, int64_t ldo, int64_t r0,
                          int64_t r1, int64_t M, int64_t Mp, int64_t d, float* scratch);

// The same kernel in AVX-512 (flash_attention_avx512.cpp): the same layouts
// and results within float32 rounding, fewer instructions per FLOP.
bool flash_attention_avx512_available();
void flash_attention_rows_avx512(const float* q, const float* kt, const float* v, float* out, int64_t ldo, int64_t r0,
                                 int64_t r1, int64_t M, int64_t Mp, int64_t d, float* scratch);

// The same in bf16 (flash_attention_bf16.cpp), where the CPU has AVX512-BF16:
// q: [N, d]; out: rows ldo apart; kt: [Mp / 16, d / 2, 16, 2], key panels of 16 by dimension
// pairs; v: [Mp / 2, d, 2], value rows by key pairs; bf16 as uint16_t. Scores,
// softmax and accumulation in float32.
bool flash_attention_bf16_available();
int64_t flash_attention_bf16_scratch(int64_t d);
void flash_attention_rows_bf16(const uint16_t* q, const uint16_t* kt, const uint16_t* v, uint16_t* out, int64_t ldo,
                               int64_t r0, int64_t r1, int64_t M, int64_t Mp, int64_t d, float* scratch);

// The same on AMX tiles (flash_attention_amx.cpp), where the CPU and the OS
// allow them: q: [N, dq], d zero-padded to dq, a multiple of 32; kt: [Mp / 16,
// dq / 2, 16, 2]; v: [Mp / 2, dv, 2], d zero-padded to dv, a multiple of 16; Mp
// a multiple of 32. out as above (d columns a row).
bool flash_attention_amx_available();
int64_t flash_attention_amx_scratch(int64_t d);
void flash_attention_rows_amx(const uint16_t* q, const uint16_t* kt, const uint16_t* v, uint16_t* out, int64_t ldo,
                              int64_t r0, int64_t r1, int64_t M, int64_t Mp, int64_t d, float* scratch);

}  // namespace ldm

// GEGLU's tail in one pass (Shazeer 2020, "GLU variants"; the reference's
// GEGLU: a * GELU(gate) with the exact erf GELU), float32 with AVX2/FMA.
// libtorch 1.13 spends three passes and a copy on it: GELU on the strided gate
// half is slow, so the gate is copied, GELU'd in place, then multiplied.
#pragma once
#include <cstdint>

namespace ldm {

// True when this CPU runs geglu_rows (AVX2 and FMA).
bool geglu_available();
// out[r][j] = a[j] * GELU(g[j]) for each of `rows` rows of h = [a | g] (n
// values each, rows ldh apart); out's rows n apart. erf as Abramowitz & Stegun
// 7.1.26 (absolute error <= 1.5e-7, the polynomial libtorch's vectorised erf
// uses).
void geglu_rows(const float* h, int64_t ldh, float* out, int64_t rows, int64_t n);
// The same on bf16 (as uint16_t), computed in float32 and rounded once to
// nearest even (libtorch rounds the GELU and the product each).
void geglu_rows_bf16(const uint16_t* h, int64_t ldh, uint16_t* out, int64_t rows, int64_t n);

}  // namespace ldm

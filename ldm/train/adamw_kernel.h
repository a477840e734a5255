// The fused AdamW update over a float range (FusedAdamW's inner loop). Its own
// file, free of libtorch headers, so it can be built with -fno-math-errno
// (sqrt vectorises) and AVX-512/AVX2 clones without touching the PCH.
#pragma once
#include <cstdint>

namespace ldm {

// p = p*decay (if decay_on); m = b1 m + a1 g; v = b2 v + a2 g^2;
// p += step_size * m / (sqrt(v)/sqrt_bc2 + eps), for i in [lo, hi).
void adamw_kernel(float* p, const float* g, float* m, float* v, int64_t lo, int64_t hi, bool decay_on, float decay,
                  float b1, float a1, float b2, float a2, float sqrt_bc2, float eps, float step_size);

}  // namespace ldm

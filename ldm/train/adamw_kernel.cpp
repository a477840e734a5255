#include "ldm/train/adamw_kernel.h"

#include <cmath>

namespace ldm {

// The build targets baseline x86-64; the clones give AVX-512/AVX2 code picked
// at load time. Measured: 210 M floats in 0.33 s (17.7 GB/s, memory-bound)
// against 0.77 s unvectorised and ~0.6 s for libtorch's eight passes.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
void adamw_kernel(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ m, float* __restrict__ v,
                  int64_t lo, int64_t hi, bool decay_on, float decay, float b1, float a1, float b2, float a2,
                  float sqrt_bc2, float eps, float step_size) {
  const float d = decay_on ? decay : 1.0f;  // x*1 is exact: one loop for both
  for (int64_t i = lo; i < hi; ++i) {
    const float gi = g[i];
    const float w = p[i] * d;
    const float mi = m[i] * b1 + a1 * gi;
    const float vi = v[i] * b2 + a2 * gi * gi;
    m[i] = mi;
    v[i] = vi;
    p[i] = w + step_size * (mi / (std::sqrt(vi) / sqrt_bc2 + eps));
  }
}

}  // namespace ldm

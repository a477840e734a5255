// Image resampling with PIL's Lanczos filter (a = 3), the resampler of
// A1111's "Lanczos" upscaler and the hires fix's image upscalers.
#pragma once
#include <torch/types.h>

namespace ldm::io {

// [N, C, H, W] (or [C, H, W]) float -> the same at height x width, each axis
// resampled as PIL's Image.resize(..., LANCZOS) does: pixel centres mapped
// ((x + 0.5) * in / out), the kernel widened by in / out when shrinking
// (antialias), taps outside the image dropped and the rest renormalised.
// Float throughout (PIL rounds to 8 bits between its two passes) and clamped
// to [0, 1] (Lanczos overshoots at edges).
torch::Tensor resize_lanczos(const torch::Tensor& image, int64_t height, int64_t width);

// The [out, in] matrix of one axis' weights (rows sum to 1); for tests.
torch::Tensor lanczos_weights(int64_t in, int64_t out);

}  // namespace ldm::io

// Image preprocessing and augmentation, configured like the reference's
// dataset params: resize (antialiased, shorter side), crop (center or
// random), horizontal flip, pad, then scale to [-1, 1].
#pragma once
#include <torch/types.h>

#include <cstdint>
#include <string>

namespace ldm {
class Params;

struct TransformOptions {
  int64_t size = 0;            // resize the shorter side to this (0: keep)
  std::string crop = "none";   // none | center | random
  int64_t crop_size = 0;       // 0: `size` (square crops)
  double flip_p = 0.0;         // horizontal flip probability
  int64_t pad = 0;             // zero padding (in [0, 1] units: black) on every side
  // keys size, crop, crop_size, flip_p, pad of a dataset's params
  static TransformOptions from_params(const Params& p);
  bool random() const { return crop == "random" || flip_p > 0; }
};

// [C, H, W] in [0, 1] -> [C, H', W'] in [-1, 1]. Random choices come from
// `seed` so an example's augmentation does not depend on thread timing.
torch::Tensor apply_transforms(const torch::Tensor& image, const TransformOptions& o, uint64_t seed);

}  // namespace ldm

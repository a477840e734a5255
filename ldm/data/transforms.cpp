#include "ldm/data/transforms.h"

#include <torch/torch.h>

#include <random>

#include "ldm/error.h"
#include "ldm/util/config.h"

namespace ldm {

TransformOptions TransformOptions::from_params(const Params& p) {
  TransformOptions o;
  o.size = p.get<int64_t>("size", 0);
  o.crop = p.get<std::string>("crop", "none");
  o.crop_size = p.get<int64_t>("crop_size", 0);
  o.flip_p = p.get<double>("flip_p", 0.0);
  o.pad = p.get<int64_t>("pad", 0);
  if (o.crop != "none" && o.crop != "center" && o.crop != "random")
    throw Error(p.where() + ".crop: expected none, center or random, got \"" + o.crop + "\"");
  if (o.flip_p < 0 || o.flip_p > 1) throw Error(p.where() + ".flip_p: expected a probability in [0, 1]");
  if (o.size < 0 || o.pad < 0 || o.crop_size < 0) throw Error(p.where() + ": size, crop_size and pad must be >= 0");
  return o;
}

torch::Tensor apply_transforms(const torch::Tensor& image, const TransformOptions& o, uint64_t seed) {
  namespace F = torch::nn::functional;
  std::mt19937_64 rng(seed);
  auto x = image;
  if (o.size > 0) {
    const int64_t h = x.size(1), w = x.size(2);
    const double s = static_cast<double>(o.size) / std::min(h, w);
    const int64_t nh = std::max<int64_t>(1, std::llround(h * s)), nw = std::max<int64_t>(1, std::llround(w * s));
    if (nh != h || nw != w)
      x = F::interpolate(x.unsqueeze(0), F::InterpolateFuncOptions()
                                             .size(std::vector<int64_t>{nh, nw})
                                             .mode(torch::kBilinear)
                                             .align_corners(false)
                                             .antialias(true))
              .squeeze(0)
              .clamp(0, 1);
  }
  if (o.crop != "none") {
    const int64_t cs = o.crop_size ? o.crop_size : o.size;
    const int64_t h = x.size(1), w = x.size(2);
    if (cs <= 0 || cs > h || cs > w)
      throw Error("crop_size " + std::to_string(cs) + " does not fit an image of " + std::to_string(h) + "x" + std::to_string(w));
    int64_t top = (h - cs) / 2, left = (w - cs) / 2;
    if (o.crop == "random") {
      top = std::uniform_int_distribution<int64_t>(0, h - cs)(rng);
      left = std::uniform_int_distribution<int64_t>(0, w - cs)(rng);
    }
    x = x.narrow(1, top, cs).narrow(2, left, cs);
  }
  if (o.flip_p > 0 && std::uniform_real_distribution<double>(0, 1)(rng) < o.flip_p) x = x.flip({2});
  if (o.pad > 0) x = F::pad(x, F::PadFuncOptions({o.pad, o.pad, o.pad, o.pad}));
  return (x * 2 - 1).contiguous();
}

}  // namespace ldm

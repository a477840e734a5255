#include "ldm/pipeline/hires.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "ldm/error.h"
#include "ldm/io/resize.h"
#include "ldm/pipeline/validate.h"
#include "ldm/util/number.h"

namespace ldm::pipeline {

const std::vector<std::string>& hires_upscalers() {
  static const std::vector<std::string> v = {"latent", "latent-nearest", "latent-bicubic", "lanczos", "nearest"};
  return v;
}

std::string a1111_upscaler_name(const std::string& upscaler) {
  static const std::vector<std::string> a = {"Latent", "Latent (nearest)", "Latent (bicubic)", "Lanczos", "Nearest"};
  const auto& v = hires_upscalers();
  const auto it = std::find(v.begin(), v.end(), upscaler);
  return it == v.end() ? upscaler : a[it - v.begin()];
}

bool hires_in_pixels(const std::string& upscaler) { return upscaler.rfind("latent", 0) != 0; }

torch::Tensor upscale_image(const torch::Tensor& image, int64_t h, int64_t w, const std::string& how) {
  auto x = image.dim() == 3 ? image.unsqueeze(0) : image;
  // PIL's NEAREST samples at pixel centres: nearest-exact (called directly:
  // libtorch 1.13's interpolate warns about align_corners for this mode)
  if (how == "nearest") x = at::_upsample_nearest_exact2d(x.to(torch::kFloat32).contiguous(), {h, w});
  else if (how == "lanczos") x = io::resize_lanczos(x, h, w);
  else throw Error("image upscaler: expected lanczos or nearest, got \"" + how + "\"");
  return image.dim() == 3 ? x[0] : x;
}

namespace {
torch::Tensor upscale_latents(const torch::Tensor& z, int64_t h, int64_t w, const std::string& how) {
  namespace F = torch::nn::functional;
  auto o = F::InterpolateFuncOptions().size(std::vector<int64_t>{h, w});
  if (how == "latent-nearest") return F::interpolate(z, o.mode(torch::kNearest));
  // A1111's Latent upscalers: align_corners false, no antialias
  if (how == "latent-bicubic") return F::interpolate(z, o.mode(torch::kBicubic).align_corners(false));
  return F::interpolate(z, o.mode(torch::kBilinear).align_corners(false));
}

std::string known_upscalers() {
  std::string s;
  for (const auto& u : hires_upscalers()) s += (s.empty() ? "" : ", ") + u;
  return s;
}
}  // namespace

GenerateRequest hires_request(const GenerateRequest& first, const HiresOptions& h, int64_t factor) {
  const auto& ups = hires_upscalers();
  if (std::find(ups.begin(), ups.end(), h.upscaler) == ups.end())
    throw Error("hires upscaler: expected one of " + known_upscalers() + ", got \"" + h.upscaler + "\"");
  if (!(h.scale >= 1 && h.scale <= 4)) throw Error("hires scale: expected 1 to 4, got " + format_number(h.scale));
  if (!(h.strength > 0 && h.strength <= 1)) throw Error("hires strength: expected in (0, 1], got " + format_number(h.strength));
  if (h.steps < 0) throw Error("hires steps: expected >= 0 (0: as the first pass), got " + std::to_string(h.steps));
  if (first.init_image.defined() || first.init_latents.defined())
    throw Error("hires fix: for text-to-image requests (the first pass has an init image)");
  if (first.width <= 0 || first.height <= 0) throw Error("hires fix: needs the first pass's width and height");
  GenerateRequest r = first;
  // A1111 rounds the scaled size down to a multiple of 8; ours must divide by the model's factor too
  auto side = [&](int64_t given, int64_t base) {
    const int64_t v = given > 0 ? given : static_cast<int64_t>(std::floor(base * h.scale));
    return std::max<int64_t>(factor, v / factor * factor);
  };
  r.width = side(h.width, first.width);
  r.height = side(h.height, first.height);
  r.strength = h.strength;
  if (h.steps > 0) r.steps = h.steps;
  r.init_noise = torch::Tensor();
  return r;
}

GenerateResult generate_hires(Pipeline& p, const GenerateRequest& first, const HiresOptions& h,
                              const GenerateCallbacks& cb) {
  if (first.seed == -1 || first.width <= 0 || first.height <= 0) {  // one seed for both passes; sizes known
    GenerateRequest fixed = first;
    if (fixed.seed == -1) fixed.seed = static_cast<int64_t>(std::random_device{}());
    if (fixed.width <= 0) fixed.width = p.default_size();
    if (fixed.height <= 0) fixed.height = p.default_size();
    return generate_hires(p, fixed, h, cb);
  }
  if (p.options().release_after_use)  // said before the first pass, not after it
    throw Error("hires fix: this pipeline releases its weights after one pass (release_after_use); load it without");
  const int64_t factor = p.facts().factor;
  GenerateRequest second = hires_request(first, h, factor);
  GenerateRequest one = first;
  const bool pixels = hires_in_pixels(h.upscaler);
  if (const int64_t ic = p.image_channels(); pixels && ic != 1 && ic != 3)
    throw Error("hires upscaler " + h.upscaler + ": enlarges images, and this model makes no images (use a latent upscaler)");
  one.decode = pixels;  // an image upscaler works on the decoded image, then the second pass encodes it
  auto a = p.generate(one, cb);
  if (a.status != Status::Ok) return a;
  if (pixels) second.init_image = upscale_image(a.images, second.height, second.width, h.upscaler);
  else second.init_latents = upscale_latents(a.latents, second.height / factor, second.width / factor, h.upscaler);
  auto b = p.generate(second, cb);
  b.model_evaluations += a.model_evaluations;
  b.timings.conditioning += a.timings.conditioning;
  b.timings.sampling += a.timings.sampling;
  b.timings.total += a.timings.total;
  b.notes.insert(b.notes.begin(), a.notes.begin(), a.notes.end());
  // the first pass's text (its size and seed regenerate it) and the second pass's settings
  const std::string extra = ", Denoising strength: " + format_number(second.strength) + ", Hires upscale: " + format_number(h.scale) +
                            (h.width > 0 || h.height > 0 ? ", Hires resize: " + std::to_string(second.width) + "x" +
                                                               std::to_string(second.height)
                                                         : "") +
                            ", Hires steps: " + std::to_string(second.steps) + ", Hires upscaler: " + a1111_upscaler_name(h.upscaler);
  for (size_t i = 0; i < a.infotexts.size() && i < b.infotexts.size(); ++i) b.infotexts[i] = a.infotexts[i] + extra;
  if (!b.infotexts.empty()) b.parameters = b.infotexts.front();
  return b;
}

}  // namespace ldm::pipeline

#include "ldm/pipeline/validate.h"

#include <cmath>
#include <algorithm>
#include <fstream>

#include "ldm/error.h"
#include "ldm/util/number.h"
#include "ldm/models/diffusion/samplers/sampler.h"
#include "ldm/modules/diffusionmodules/util.h"

namespace ldm::pipeline {

namespace {
void finite(double v, const char* what) {
  if (!std::isfinite(v)) throw Error(std::string(what) + ": expected a finite number, got " + format_number(v));
}
void side(int64_t v, const ModelFacts& m, const char* what) {
  if (v <= 0) throw Error(std::string(what) + ": expected a positive number of pixels, got " + std::to_string(v));
  if (v > kMaxSide) throw Error(std::string(what) + ": at most " + std::to_string(kMaxSide) + " pixels, got " + std::to_string(v));
  if (v % size_multiple(m))
    throw Error(std::string(what) + ": must be a multiple of " + std::to_string(size_multiple(m)) + " (the first stage's " +
                std::to_string(m.factor) + " x the UNet's " + std::to_string(m.unet_factor) + "), got " + std::to_string(v));
}
void conditioning(const GenerateRequest& r, const ModelFacts& m) {
  if ((!r.prompt.empty() || !r.prompts.empty()) && !m.text)
    throw Error("prompt: this model's cond stage is not a text encoder (give class labels or a cond tensor)");
  if (!r.prompts.empty() && static_cast<int64_t>(r.prompts.size()) != image_count(r))
    throw Error("prompts: give one per image (" + std::to_string(image_count(r)) + "), got " +
                std::to_string(r.prompts.size()));
  if (!r.class_labels.empty()) {
    if (!m.classes) throw Error("class labels: this model has no class embedder");
    const auto n = static_cast<int64_t>(r.class_labels.size());
    if (n != 1 && n != image_count(r))
      throw Error("class labels: give one label or one per image (" + std::to_string(image_count(r)) + "), got " +
                  std::to_string(n));
  }
  // a text model takes the empty prompt (as A1111); others need their conditioning
  const bool given = !r.class_labels.empty() || r.cond.defined();
  if (!given && !m.conditioning_key.empty() && !m.text)
    throw Error("this model is conditional (" + m.conditioning_key + "): give -p, --class or --cond");
}
}  // namespace

int64_t image_count(const GenerateRequest& r) {
  return r.init_noise.defined() && r.init_noise.dim() == 4 ? r.init_noise.size(0) : r.batch;
}

std::pair<int64_t, int64_t> output_size(const GenerateRequest& r, const ModelFacts& m) {
  if (r.init_noise.defined() && r.init_noise.dim() == 4)
    return {r.init_noise.size(3) * m.factor, r.init_noise.size(2) * m.factor};
  return {r.width ? r.width : m.default_size, r.height ? r.height : m.default_size};
}

double estimated_bytes(const GenerateRequest& r, const ModelFacts& m) {
  auto [w, h] = output_size(r, m);
  const double n = static_cast<double>(image_count(r)), px = static_cast<double>(w) * h;
  const double guided = r.cfg_scale != 1.0 ? 2.0 : 1.0;
  const double latents = n * guided * px / (m.factor * m.factor) * m.latent_channels * 4.0 * 16;  // sampler state
  // a decoder holds ~3 maps of its widest full-resolution layer at once
  const double decode_px = m.decode_tiled ? std::min(px, 512.0 * 512.0) : px;
  const double decoder = n * decode_px * m.decoder_width * 4.0 * 3;
  return latents + decoder;
}

double available_bytes() {
  std::ifstream f("/proc/meminfo");
  std::string key;
  double kb = 0;
  while (f >> key >> kb) {
    if (key == "MemAvailable:") return kb * 1024.0;
    f.ignore(256, '\n');
  }
  return 1e18;  // unknown: do not refuse
}

namespace {
bool uses_ddim_spacing(const std::string& sampler) { return sampler == "ddim" || sampler == "plms"; }
// The reference's make_ddim_timesteps ("uniform": range(0, T, T // steps) + 1)
// must stay inside [0, T).
bool spacing_fits(int64_t steps, const std::string& disc, int64_t T) {
  auto ts = make_ddim_timesteps(disc, steps, T);
  return std::all_of(ts.begin(), ts.end(), [T](int64_t t) { return t >= 0 && t < T; });
}
}  // namespace

int64_t visited_timesteps(const std::string& sampler, int64_t steps, const std::string& disc, int64_t T) {
  return uses_ddim_spacing(sampler) ? static_cast<int64_t>(make_ddim_timesteps(disc, steps, T).size()) : steps;
}

void validate_sampling(const std::string& sampler, int64_t steps, const std::string& disc, int64_t T) {
  const auto& names = sampler_names();
  if (std::find(names.begin(), names.end(), sampler) == names.end()) {
    std::string known;
    for (auto& s : names) known += (known.empty() ? "" : ", ") + s;
    throw Error("sampler: unknown \"" + sampler + "\" (expected one of " + known + ")");
  }
  if (steps < 1 || steps > T) throw Error("steps: expected 1 to " + std::to_string(T) + ", got " + std::to_string(steps));
  if (disc != "uniform" && disc != "quad") throw Error("discretize: expected uniform or quad, got \"" + disc + "\"");
  if (!uses_ddim_spacing(sampler) || spacing_fits(steps, disc, T)) return;
  int64_t below = steps - 1, above = steps + 1;
  while (below > 0 && !spacing_fits(below, disc, T)) --below;
  while (above <= T && !spacing_fits(above, disc, T)) ++above;
  std::string near = below > 0 ? std::to_string(below) : "";
  if (above <= T) near += (near.empty() ? "" : " or ") + std::to_string(above);
  throw Error("steps: " + std::to_string(steps) + " " + sampler + " steps over " + std::to_string(T) +
              " timesteps step past the last one (the reference's spacing " + std::to_string(T) + " // " +
              std::to_string(steps) + "); the nearest counts that work: " + near);
}

void validate(const GenerateRequest& r, const ModelFacts& m) {
  finite(r.cfg_scale, "cfg scale");
  finite(r.eta, "eta");
  if (!(r.cfg_sigma_lo >= 0 && std::isfinite(r.cfg_sigma_lo) && r.cfg_sigma_hi > r.cfg_sigma_lo))
    throw Error("cfg interval: expected 0 <= low < high (sigmas; high may be inf), got " + format_number(r.cfg_sigma_lo) + ", " +
                format_number(r.cfg_sigma_hi));
  if (r.clip_skip != 0) {
    if (!m.text || r.cond.defined() || !r.class_labels.empty())
      throw Error("clip skip: for prompts of text models (this request has no text encoder to skip layers of)");
    if (r.clip_skip < 0 || r.clip_skip > m.text_layers)
      throw Error("clip skip: expected 1 to " + std::to_string(m.text_layers) + " (0: the model's own), got " +
                  std::to_string(r.clip_skip));
  }
  if (!(r.cfg_rescale >= 0 && r.cfg_rescale <= 1))
    throw Error("cfg rescale: expected 0 <= phi <= 1, got " + format_number(r.cfg_rescale));
  finite(r.strength, "strength");
  if (r.batch < 1) throw Error("batch: expected at least 1 image, got " + std::to_string(r.batch));
  if (r.eta < 0) throw Error("eta: expected >= 0, got " + format_number(r.eta));
  if (r.seed < -1) throw Error("seed: expected >= 0, or -1 for a random seed, got " + std::to_string(r.seed));
  if (r.schedule != "discrete" && r.schedule != "karras")
    throw Error("schedule: expected discrete or karras, got \"" + r.schedule + "\"");
  validate_sampling(r.sampler, r.steps, r.discretize, m.timesteps);
  if (r.init_noise.defined()) {
    if (r.init_noise.dim() != 4 || r.init_noise.size(1) != m.latent_channels || r.init_noise.size(0) < 1 ||
        r.init_noise.size(2) % m.unet_factor || r.init_noise.size(3) % m.unet_factor || r.init_noise.size(2) < 1 ||
        r.init_noise.size(3) < 1)
      throw Error("init noise: expected [N, " + std::to_string(m.latent_channels) + ", h, w] with h and w multiples of " +
                  std::to_string(m.unet_factor) + ", got " + c10::str(r.init_noise.sizes()));
  } else {
    auto [w, h] = output_size(r, m);
    side(w, m, "width");
    side(h, m, "height");
  }
  if ((r.init_image.defined() || r.init_latents.defined()) && (r.strength <= 0 || r.strength > 1))
    throw Error("strength: expected in (0, 1], got " + format_number(r.strength));
  if (r.init_image.defined()) {
    const auto& x = r.init_image;
    const bool batch_ok = x.dim() == 3 || (x.dim() == 4 && (x.size(0) == 1 || x.size(0) == image_count(r)));
    if (!batch_ok || (x.size(-3) != 1 && x.size(-3) != 3) || x.numel() == 0)
      throw Error("init image: expected [C, H, W] or [" + std::to_string(image_count(r)) +
                  ", C, H, W] (one per image) with 1 or 3 channels, got " + c10::str(x.sizes()));
    // encoded at its own size: bounded so the memory estimate (the output's) stays true
    auto [w, h] = output_size(r, m);
    if (r.init_resize_latent && x.size(-1) * x.size(-2) > 4 * w * h)
      throw Error("init image: " + std::to_string(x.size(-1)) + "x" + std::to_string(x.size(-2)) +
                  " is encoded at its own size when its latents are resized; expected at most 4x the output's " +
                  std::to_string(w) + "x" + std::to_string(h) + " pixels (resize it in pixels instead)");
  }
  if (r.init_latents.defined()) {
    if (r.init_image.defined()) throw Error("init latents: give an init image or init latents, not both");
    auto [w, h] = output_size(r, m);
    const int64_t n = r.init_latents.dim() == 4 ? r.init_latents.size(0) : 0;
    if (r.init_latents.dim() != 4 || (n != 1 && n != image_count(r)) || r.init_latents.size(1) != m.latent_channels ||
        r.init_latents.size(2) * m.factor != h || r.init_latents.size(3) * m.factor != w)
      throw Error("init latents: expected [1 or " + std::to_string(image_count(r)) + ", " +
                  std::to_string(m.latent_channels) + ", " + std::to_string(h / m.factor) + ", " +
                  std::to_string(w / m.factor) + "] for " + std::to_string(w) + "x" + std::to_string(h) + ", got " +
                  c10::str(r.init_latents.sizes()));
  }
  if (r.mask.defined()) {
    if (!r.init_image.defined()) throw Error("mask: needs an init image (the image to inpaint)");
    if (r.mask.dim() != 3 || r.mask.size(0) != 1 || r.mask.numel() == 0)
      throw Error("mask: expected [1, H, W], got " + c10::str(r.mask.sizes()));
  }
  conditioning(r, m);
  const double need = estimated_bytes(r, m), have = available_bytes();
  if (need > have)
    throw Error("request too large: about " + format_number(std::round(need / 1e8) / 10) + " GB needed, " +
                format_number(std::round(have / 1e8) / 10) + " GB available (fewer images per batch, a smaller size, or VAE tiling)");
}

}  // namespace ldm::pipeline

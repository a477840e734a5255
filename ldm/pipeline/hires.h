// The hires fix (A1111's enable_hr): generate, enlarge the latents (or the
// decoded image), then run img2img on them at the larger size, which adds the
// detail a plain upscale cannot. Two Pipeline::generate calls; the pipeline must not release its
// weights after the first (LoadOptions::release_after_use off).
#pragma once
#include <string>
#include <vector>

#include "ldm/pipeline/pipeline.h"

namespace ldm::pipeline {

struct HiresOptions {
  double scale = 2.0;                // output size = first pass size x scale ...
  int64_t width = 0, height = 0;     // ... unless given (pixels)
  std::string upscaler = "latent";   // one of hires_upscalers()
  double strength = 0.7;             // of the second pass (A1111's denoising_strength)
  int64_t steps = 0;                 // of the second pass; 0: the first pass's
};

// "latent" (bilinear), "latent-nearest", "latent-bicubic": A1111's Latent,
// Latent (nearest) and Latent (bicubic) upscalers, which enlarge the latents;
// "lanczos", "nearest": its Lanczos and Nearest upscalers, which enlarge the
// decoded image (PIL's filters), encoded again for the second pass (whose
// strength can then be low: the latent ones need about 0.5 or more).
const std::vector<std::string>& hires_upscalers();
// Its name in A1111 ("Latent (nearest)", "Lanczos", ...), as infotexts carry it.
std::string a1111_upscaler_name(const std::string& upscaler);
// Whether the upscaler works on images (decode, enlarge, encode).
bool hires_in_pixels(const std::string& upscaler);
// An image [C, H, W] or [N, C, H, W] in [0, 1] enlarged (or shrunk) to h x w by
// "lanczos" or "nearest" (PIL's filters; A1111's upscalers of those names).
torch::Tensor upscale_image(const torch::Tensor& image, int64_t h, int64_t w, const std::string& how);

// The second pass's request for `first` (throws ldm::Error naming a bad option);
// its init_latents are left for generate_hires to fill.
GenerateRequest hires_request(const GenerateRequest& first, const HiresOptions& h, int64_t factor);

// Both passes (sizes 0: the model's own); progress reports each pass's steps. The result is the second
// pass's, with model evaluations and timings of both and infotexts that name
// the first pass's settings and the hires ones (A1111's "Hires upscale: ...").
GenerateResult generate_hires(Pipeline& p, const GenerateRequest& first, const HiresOptions& h,
                              const GenerateCallbacks& cb = {});

}  // namespace ldm::pipeline

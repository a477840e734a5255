// The server's requests and answers as data: A1111 (/sdapi/v1/...) and
// OpenAI (/v1/images/...) JSON to a pipeline request, and results back to
// JSON. Pure functions (no sockets, no model): the fuzz targets and unit
// tests drive them directly. Every refusal is an HttpError with a 4xx status.
#pragma once
#include <nlohmann/json.hpp>

#include <stdexcept>
#include <string>
#include <vector>

#include <optional>

#include "ldm/pipeline/hires.h"
#include "ldm/pipeline/request.h"

namespace ldm::serve {

using json = nlohmann::json;

struct HttpError : std::runtime_error {
  HttpError(int status, std::string error, const std::string& detail)
      : std::runtime_error(detail), status(status), error(std::move(error)) {}
  int status;
  std::string error;
};

// {"error": ..., "detail": ...}
json error_body(const std::string& error, const std::string& detail);

struct Limits {
  int64_t max_pixels = 1 << 20;  // width x height
  int64_t max_images = 16;       // batch_size x n_iter (n)
  int64_t max_steps = 1000;
  int64_t factor = 8;            // sizes are multiples of this
};

// One HTTP request as the worker runs it: n_iter pipeline calls of `req`
// (seed + i x batch for call i), an optional checkpoint switch first.
struct Job {
  pipeline::GenerateRequest req;
  int64_t n_iter = 1;
  std::string checkpoint;  // override_settings.sd_model_checkpoint ("" = keep)
  std::string sampler_name;  // as the client named it (A1111 names)
  json parameters;         // the request with defaults filled (A1111's "parameters")
  std::optional<pipeline::HiresOptions> hires;  // enable_hr: a second pass at the larger size
  bool clip_skip_set = false;  // override_settings named CLIP_stop_at_last_layers (else the server's option)
};

// A1111 sampler/scheduler names -> ours (also accepts ours). Unknown names
// are a 400 listing the known ones.
void set_sampler(pipeline::GenerateRequest& r, const std::string& sampler_name, const std::string& scheduler);
std::vector<std::string> a1111_sampler_names();
// A1111's CLIP_stop_at_last_layers in an options object -> GenerateRequest::clip_skip
// (its 1, the default, is the model's own layer: 0); 400 below 1.
int64_t a1111_clip_skip(const json& options);

// POST /sdapi/v1/txt2img and /img2img bodies (img2img: init_images, mask ...).
Job parse_a1111(const std::string& body, bool img2img, const Limits& lim);
// POST /v1/images/generations body.
Job parse_openai(const std::string& body, const Limits& lim);
// "WxH" of the OpenAI API.
std::pair<int64_t, int64_t> parse_size(const std::string& size, const Limits& lim);
// An A1111 infotext (prompt lines, "Negative prompt: ..." lines, then the
// "Key: value, ..." line) as A1111's png-info "parameters": "Prompt",
// "Negative prompt", each key (values as strings, quotes removed) and
// "Size-1"/"Size-2" for "Size: WxH".
json parse_infotext(const std::string& text);
// POST /sdapi/v1/png-info body {"image": base64} -> {"info", "items", "parameters"}.
json png_info(const std::string& body);
// GET /sdapi/v1/upscalers (those that need no model: None, Lanczos, Nearest)
// and /sdapi/v1/latent-upscale-modes, as A1111 lists them.
json a1111_upscalers();
json latent_upscale_modes();
// POST /sdapi/v1/extra-single-image (A1111's Extras tab, upscaling only):
// {"image", "resize_mode" 0 (by upscaling_resize) or 1 (to upscaling_resize_w
// x _h, upscaling_crop), "upscaler_1", "upscaler_2",
// "extras_upscaler_2_visibility"} -> {"html_info", "image"}. Outputs up to 16x
// the generation limit's pixels; face restoration is refused.
json extra_single_image(const std::string& body, const Limits& lim);
// A base64 image (optional data: prefix) -> [C, H, W] in [0, 1].
torch::Tensor decode_b64_image(const std::string& b64, int channels, const std::string& what, const Limits& lim);

}  // namespace ldm::serve

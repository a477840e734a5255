#include "tools/ldm/serve/api.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <sstream>

#include "ldm/error.h"
#include "ldm/io/base64.h"
#include "ldm/io/image.h"
#include "ldm/models/diffusion/samplers/sampler.h"
#include "ldm/pipeline/validate.h"

namespace ldm::serve {

json error_body(const std::string& error, const std::string& detail) { return {{"error", error}, {"detail", detail}}; }

namespace {
HttpError bad(const std::string& detail) { return HttpError(400, "invalid request", detail); }

const char* type_name(const json& v) { return v.type_name(); }

// A field of the expected JSON type, or `dflt` when absent or null.
int64_t get_int(const json& j, const char* k, int64_t dflt) {
  if (!j.contains(k) || j[k].is_null()) return dflt;
  const auto& v = j[k];
  if (v.is_number_integer()) return v.get<int64_t>();
  if (v.is_number_float() && std::isfinite(v.get<double>()) && v.get<double>() == std::floor(v.get<double>()) &&
      std::abs(v.get<double>()) < 9e15)
    return static_cast<int64_t>(v.get<double>());
  throw bad(std::string(k) + ": expected an integer, got " + (v.is_number() ? v.dump() : type_name(v)));
}
double get_num(const json& j, const char* k, double dflt) {
  if (!j.contains(k) || j[k].is_null()) return dflt;
  if (!j[k].is_number()) throw bad(std::string(k) + ": expected a number, got " + type_name(j[k]));
  return j[k].get<double>();
}
std::string get_str(const json& j, const char* k, const std::string& dflt) {
  if (!j.contains(k) || j[k].is_null()) return dflt;
  if (!j[k].is_string()) throw bad(std::string(k) + ": expected a string, got " + type_name(j[k]));
  return j[k].get<std::string>();
}
bool get_bool(const json& j, const char* k, bool dflt) {
  if (!j.contains(k) || j[k].is_null()) return dflt;
  if (!j[k].is_boolean()) throw bad(std::string(k) + ": expected true or false, got " + type_name(j[k]));
  return j[k].get<bool>();
}

json parse_object(const std::string& body) {
  json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) throw HttpError(400, "malformed JSON", "the request body is not valid JSON");
  if (!j.is_object()) throw HttpError(400, "malformed JSON", "the request body must be a JSON object");
  return j;
}

void check_size(int64_t w, int64_t h, const Limits& lim) {
  for (auto [v, name] : {std::pair{w, "width"}, std::pair{h, "height"}}) {
    if (v <= 0 || v % lim.factor)
      throw bad(std::string(name) + ": expected a positive multiple of " + std::to_string(lim.factor) + ", got " +
                std::to_string(v));
  }
  if (w * h > lim.max_pixels)
    throw bad("width x height: " + std::to_string(w) + "x" + std::to_string(h) + " is more than the server's " +
              std::to_string(lim.max_pixels) + " pixels (--max-pixels)");
}

// A1111 fields that change the image and that this server does not
// implement: refused when set, rather than answered with an image made
// without them (A1111 itself refuses scripts it does not have: 422).
void refuse_unsupported(const json& j) {
  auto is_set = [&j](const char* k) {
    if (!j.contains(k) || j[k].is_null()) return false;
    const auto& v = j[k];
    if (v.is_boolean()) return v.get<bool>();
    if (v.is_number()) return v.get<double>() != 0.0;
    if (v.is_string()) return !v.get<std::string>().empty() && v.get<std::string>() != "None";
    if (v.is_object() || v.is_array()) return !v.empty();
    return true;
  };
  const std::pair<const char*, const char*> fields[] = {
      {"restore_faces", "no face restorer on this server"},
      {"tiling", "seamless tiling is not implemented here"},
      {"subseed_strength", "variation seeds are not implemented here"},
      {"refiner_checkpoint", "no refiner on this server"},
      {"script_name", "scripts are not available on this server"},
      {"alwayson_scripts", "extensions (ControlNet, ADetailer, ...) are not available on this server"},
  };
  for (const auto& [k, why] : fields)
    if (is_set(k)) throw bad(std::string(k) + ": " + why);
}

void check_count(int64_t images, const Limits& lim) {
  if (images < 1 || images > lim.max_images)
    throw bad("images per request: expected 1 to " + std::to_string(lim.max_images) + ", got " + std::to_string(images));
}

void check_steps(int64_t steps, const Limits& lim) {
  if (steps <= 0 || steps > lim.max_steps)
    throw bad("steps: expected 1 to " + std::to_string(lim.max_steps) + ", got " + std::to_string(steps));
}

const std::map<std::string, std::pair<std::string, std::string>>& a1111_samplers() {
  // A1111 name -> (ours, the schedule it implies; "" = as the request says): each
  // sampler's own A1111 name, and the pre-1.9 "DPM++ 2M Karras"
  static const auto m = [] {
    std::map<std::string, std::pair<std::string, std::string>> m;
    for (const auto& n : sampler_names()) m[a1111_sampler_name(n)] = {n, ""};
    m["DPM++ 2M Karras"] = {"dpm++2m", "karras"};
    return m;
  }();
  return m;
}
}  // namespace

int64_t a1111_clip_skip(const json& options) {
  const int64_t cs = get_int(options, "CLIP_stop_at_last_layers", 1);
  if (cs < 1) throw bad("CLIP_stop_at_last_layers: expected >= 1 (1: no skip, 2: the penultimate layer), got " + std::to_string(cs));
  return cs > 1 ? cs : 0;
}

std::vector<std::string> a1111_sampler_names() {
  std::vector<std::string> v;
  for (const auto& [k, s] : a1111_samplers()) v.push_back(k);
  return v;
}

void set_sampler(pipeline::GenerateRequest& r, const std::string& name, const std::string& scheduler) {
  std::string schedule;
  const auto& ours = sampler_names();
  if (auto it = a1111_samplers().find(name); it != a1111_samplers().end()) {
    r.sampler = it->second.first;
    schedule = it->second.second;
  } else if (std::find(ours.begin(), ours.end(), name) != ours.end()) {
    r.sampler = name;
  } else {
    std::string known;
    for (const auto& n : a1111_sampler_names()) known += (known.empty() ? "" : ", ") + n;
    for (const auto& n : ours) known += ", " + n;
    throw bad("sampler_name: unknown \"" + name + "\" (known: " + known + ")");
  }
  std::string s = scheduler;
  std::transform(s.begin(), s.end(), s.begin(), ::tolower);
  if (s == "karras") schedule = "karras";
  else if (!s.empty() && s != "automatic" && s != "discrete" && s != "normal" && s != "uniform")
    throw bad("scheduler: expected Automatic, Karras or discrete, got \"" + scheduler + "\"");
  r.schedule = schedule.empty() ? "discrete" : schedule;
}

torch::Tensor decode_b64_image(const std::string& b64, int channels, const std::string& what, const Limits& lim) {
  std::string bytes;
  try {
    bytes = io::base64_decode(b64, what);
    return io::decode_image(bytes, channels, what, lim.max_pixels);
  } catch (const Error& e) {
    throw bad(e.what());
  }
}

namespace {
// "Key: value, Key: "quoted, value", ..." -> pairs; fewer than 3 means the
// line is not a settings line (A1111 asks for 3 as well).
std::vector<std::pair<std::string, std::string>> settings_pairs(const std::string& line) {
  std::vector<std::pair<std::string, std::string>> out;
  size_t at = 0;
  while (at < line.size()) {
    while (at < line.size() && line[at] == ' ') ++at;
    const auto colon = line.find(':', at);
    if (colon == std::string::npos || colon == at) return {};
    std::string key = line.substr(at, colon - at), value;
    at = colon + 1;
    while (at < line.size() && line[at] == ' ') ++at;
    if (at < line.size() && line[at] == '"') {  // a quoted value with \-escapes (JSON-like)
      for (++at; at < line.size() && line[at] != '"'; ++at) value += line[at] == '\\' && at + 1 < line.size() ? line[++at] : line[at];
      ++at;
    } else {
      const auto comma = line.find(',', at);
      value = line.substr(at, comma == std::string::npos ? std::string::npos : comma - at);
      at = comma == std::string::npos ? line.size() : comma;
    }
    while (at < line.size() && line[at] != ',') ++at;
    ++at;  // past the comma
    while (!value.empty() && value.back() == ' ') value.pop_back();
    out.emplace_back(key, value);
  }
  return out.size() >= 3 ? out : decltype(out){};
}
}  // namespace

json parse_infotext(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string l; std::getline(in, l);) lines.push_back(l);
  json res = json::object();
  auto pairs = lines.empty() ? decltype(settings_pairs("")){} : settings_pairs(lines.back());
  if (!pairs.empty()) lines.pop_back();
  std::string prompt, negative;
  bool in_negative = false;
  for (const auto& l : lines) {
    if (l.rfind("Negative prompt:", 0) == 0) {
      in_negative = true;
      negative = l.substr(16);
      if (!negative.empty() && negative[0] == ' ') negative.erase(0, 1);
      continue;
    }
    std::string& dst = in_negative ? negative : prompt;
    dst += (dst.empty() ? "" : "\n") + l;
  }
  res["Prompt"] = prompt;
  res["Negative prompt"] = negative;
  for (const auto& [k, v] : pairs) {
    res[k] = v;
    const auto x = v.find('x');
    if (k == "Size" && x != std::string::npos) {
      res["Size-1"] = v.substr(0, x);
      res["Size-2"] = v.substr(x + 1);
    }
  }
  return res;
}

json png_info(const std::string& body) {
  const json j = parse_object(body);
  const std::string b64 = get_str(j, "image", "");
  if (b64.empty()) throw bad("image: required (a base64 PNG or JPEG)");
  std::map<std::string, std::string> text;
  try {
    text = io::image_text(io::base64_decode(b64, "image"), "image");
  } catch (const Error& e) {
    throw bad(e.what());
  }
  const auto it = text.find("parameters");
  const std::string info = it == text.end() ? "" : it->second;
  json items = json::object();
  for (const auto& [k, v] : text)
    if (k != "parameters") items[k] = v;
  return {{"info", info}, {"items", items}, {"parameters", info.empty() ? json::object() : parse_infotext(info)}};
}

namespace {
// A1111's upscaler names -> ours: its latent upscale modes and the upscalers
// that need no model ("None" still resizes, with Lanczos, as A1111's resize_image)
const std::vector<std::pair<std::string, std::string>>& upscaler_names() {
  static const auto v = [] {
    std::vector<std::pair<std::string, std::string>> v;
    for (const auto& u : pipeline::hires_upscalers()) {
      if (u == "lanczos") v.emplace_back("None", u);
      v.emplace_back(pipeline::a1111_upscaler_name(u), u);
    }
    return v;
  }();
  return v;
}

// the names clients may send: all (hires fix) or the image upscalers alone (extras)
std::string known_names(bool with_latent) {
  std::string s;
  for (const auto& [a, ours] : upscaler_names())
    if (with_latent || pipeline::hires_in_pixels(ours)) s += (s.empty() ? "" : ", ") + a;
  return s;
}

// An A1111 upscaler name (or ours) for the hires fix
std::string hires_upscaler_of(const std::string& name) {
  for (const auto& [a, ours] : upscaler_names())
    if (a == name) return ours;
  const auto& v = pipeline::hires_upscalers();
  if (std::find(v.begin(), v.end(), name) != v.end()) return name;
  throw bad("hr_upscaler: \"" + name + "\" is not available here (known: " + known_names(true) + ")");
}

// enable_hr's fields (A1111's defaults: hr_scale 2, Latent, denoising_strength 0.7 in its UI)
pipeline::HiresOptions parse_hires(const json& j, const pipeline::GenerateRequest& first, const Limits& lim) {
  pipeline::HiresOptions h;
  h.scale = get_num(j, "hr_scale", 2.0);
  h.width = get_int(j, "hr_resize_x", 0);
  h.height = get_int(j, "hr_resize_y", 0);
  h.steps = get_int(j, "hr_second_pass_steps", 0);
  h.strength = get_num(j, "denoising_strength", 0.7);
  h.upscaler = hires_upscaler_of(get_str(j, "hr_upscaler", "Latent"));
  try {
    auto second = pipeline::hires_request(first, h, lim.factor);
    check_size(second.width, second.height, lim);
    check_steps(second.steps, lim);
  } catch (const Error& e) {
    throw bad(e.what());
  }
  return h;
}
}  // namespace

namespace {
// [..., h, w] from the middle of x, placed as A1111 pastes a larger image (offsets side / 2 - want / 2)
torch::Tensor centre_crop(const torch::Tensor& x, int64_t h, int64_t w) {
  const int64_t top = x.size(-2) / 2 - h / 2, left = x.size(-1) / 2 - w / 2;
  return x.narrow(-2, top, h).narrow(-1, left, w).contiguous();
}

std::string size_text(const torch::Tensor& x) {
  return std::to_string(x.size(-1)) + "x" + std::to_string(x.size(-2));
}

// A1111's img2img resize_mode for an input of another size: 0 "Just resize"
// (stretched, Lanczos), 1 "Crop and resize" (scaled to cover, centre-cropped),
// 2 "Resize and fill" (scaled to fit, centred, its edge rows or columns
// stretched over the margins), with its resize_image's integer sizes; 3
// "Just resize (latent upscale)" leaves the image to the pipeline.
torch::Tensor fit(const torch::Tensor& x, int64_t h, int64_t w, int64_t mode) {
  const int64_t H = x.size(-2), W = x.size(-1);
  if ((H == h && W == w) || mode == 3) return x;
  if (mode == 0) return pipeline::upscale_image(x, h, w, "lanczos");
  const bool wider = w * H > W * h;  // the output's aspect is wider than the input's
  if (mode == 1) {  // cover: the output's width sets the scale where it is wider
    const int64_t sw = wider ? w : W * h / H, sh = wider ? H * w / W : h;
    return centre_crop(pipeline::upscale_image(x, sh, sw, "lanczos"), h, w);
  }
  const int64_t sw = wider ? W * h / H : w, sh = wider ? h : H * w / W;  // fit inside
  auto y = pipeline::upscale_image(x, std::max<int64_t>(sh, 1), std::max<int64_t>(sw, 1), "lanczos");
  const int64_t top = h / 2 - y.size(-2) / 2, left = w / 2 - y.size(-1) / 2;
  namespace F = torch::nn::functional;  // replicate padding: the edge rows and columns stretched
  auto pad = F::PadFuncOptions({left, w - y.size(-1) - left, top, h - y.size(-2) - top}).mode(torch::kReplicate);
  return F::pad(y.unsqueeze(0), pad).squeeze(0);
}

int64_t resize_mode(const json& j) {
  const int64_t m = get_int(j, "resize_mode", 0);
  if (m < 0 || m > 3)
    throw bad("resize_mode: expected 0 (just resize), 1 (crop and resize), 2 (resize and fill) or 3 (just resize, "
              "latent upscale), got " + std::to_string(m));
  return m;
}

// img2img's init_images: one image for every output image, or several, one
// each, which then set batch_size (A1111: at most batch_size of them); each
// fitted to the output size by resize_mode.
torch::Tensor init_images(const json& j, pipeline::GenerateRequest& r, int64_t mode, const Limits& lim) {
  if (!j.contains("init_images") || !j["init_images"].is_array() || j["init_images"].empty())
    throw bad("init_images: expected a list of base64 images");
  const auto& list = j["init_images"];
  if (static_cast<int64_t>(list.size()) > r.batch)
    throw bad("init_images: " + std::to_string(list.size()) + " images for batch_size " + std::to_string(r.batch) +
              " (expected 1, or at most batch_size: one per image)");
  std::vector<torch::Tensor> imgs;
  for (size_t i = 0; i < list.size(); ++i) {
    const std::string what = "init_images[" + std::to_string(i) + "]";
    if (!list[i].is_string()) throw bad(what + ": expected a base64 image, got " + std::string(list[i].type_name()));
    imgs.push_back(fit(decode_b64_image(list[i].get<std::string>(), 3, what, lim), r.height, r.width, mode));
    if (imgs.back().sizes() != imgs.front().sizes())  // resize_mode 3 keeps each image's own size
      throw bad("init_images: resize_mode 3 encodes the images at their own size, so they must share one; got " +
                size_text(imgs.front()) + " and " + size_text(imgs.back()));
  }
  r.init_resize_latent = mode == 3;
  if (imgs.size() == 1) return imgs[0];
  r.batch = static_cast<int64_t>(imgs.size());
  return torch::stack(imgs);
}
}  // namespace

Job parse_a1111(const std::string& body, bool img2img, const Limits& lim) {
  const json j = parse_object(body);
  refuse_unsupported(j);
  Job job;
  auto& r = job.req;
  r.prompt = get_str(j, "prompt", "");
  r.negative_prompt = get_str(j, "negative_prompt", "");
  r.seed = get_int(j, "seed", -1);
  if (r.seed < -1) throw bad("seed: expected -1 (random) or >= 0, got " + std::to_string(r.seed));
  r.steps = get_int(j, "steps", 20);
  check_steps(r.steps, lim);
  r.cfg_scale = get_num(j, "cfg_scale", 7.0);
  if (!std::isfinite(r.cfg_scale)) throw bad("cfg_scale: expected a finite number");
  r.width = get_int(j, "width", 512);
  r.height = get_int(j, "height", 512);
  check_size(r.width, r.height, lim);
  r.batch = get_int(j, "batch_size", 1);
  job.n_iter = get_int(j, "n_iter", 1);
  if (r.batch < 1 || job.n_iter < 1) throw bad("batch_size and n_iter: expected >= 1");
  check_count(r.batch * job.n_iter, lim);
  r.eta = get_num(j, "eta", 0.0);
  job.sampler_name = get_str(j, "sampler_name", get_str(j, "sampler_index", "Euler a"));
  set_sampler(r, job.sampler_name, get_str(j, "scheduler", ""));
  if (j.contains("override_settings") && !j["override_settings"].is_null()) {
    if (!j["override_settings"].is_object()) throw bad("override_settings: expected an object");
    job.checkpoint = get_str(j["override_settings"], "sd_model_checkpoint", "");
    // A1111's Clip skip; its 1 (the default) is the model's own layer, as A1111 leaves SD 2.x's penultimate alone
    job.clip_skip_set = j["override_settings"].contains("CLIP_stop_at_last_layers");
    r.clip_skip = a1111_clip_skip(j["override_settings"]);
  }
  if (img2img) {
    const int64_t mode = resize_mode(j);
    r.init_image = init_images(j, r, mode, lim);
    r.strength = get_num(j, "denoising_strength", 0.75);
    if (!(r.strength > 0 && r.strength <= 1)) throw bad("denoising_strength: expected in (0, 1]");
    const std::string mask = get_str(j, "mask", "");
    if (!mask.empty()) {
      // with latent upscale the latents are stretched, and so is the mask, to match them
      r.mask = fit(decode_b64_image(mask, 1, "mask", lim), r.height, r.width, mode == 3 ? 0 : mode);
      if (get_int(j, "inpainting_mask_invert", 0)) r.mask = 1 - r.mask;
    }
  }
  job.parameters = {{"prompt", r.prompt},        {"negative_prompt", r.negative_prompt},
                    {"seed", r.seed},            {"steps", r.steps},
                    {"cfg_scale", r.cfg_scale},  {"width", r.width},
                    {"height", r.height},        {"batch_size", r.batch},
                    {"n_iter", job.n_iter},      {"sampler_name", job.sampler_name},
                    {"scheduler", r.schedule},   {"eta", r.eta}};
  if (img2img) job.parameters["denoising_strength"] = r.strength;
  if (!img2img && get_bool(j, "enable_hr", false)) {
    job.hires = parse_hires(j, r, lim);
    const auto& h = *job.hires;
    job.parameters.update({{"enable_hr", true}, {"hr_scale", h.scale}, {"hr_upscaler", get_str(j, "hr_upscaler", "Latent")},
                           {"hr_resize_x", h.width}, {"hr_resize_y", h.height}, {"hr_second_pass_steps", h.steps},
                           {"denoising_strength", h.strength}});
  }
  return job;
}

json a1111_upscalers() {
  json v = json::array();
  for (const auto& [a, ours] : upscaler_names())
    if (pipeline::hires_in_pixels(ours))
      v.push_back({{"name", a}, {"model_name", nullptr}, {"model_path", nullptr}, {"model_url", nullptr}, {"scale", 4}});
  return v;
}

json latent_upscale_modes() {
  json v = json::array();
  for (const auto& [a, ours] : upscaler_names())
    if (!pipeline::hires_in_pixels(ours)) v.push_back({{"name", a}});
  return v;
}

namespace {
std::string image_upscaler_of(const json& j, const char* key) {
  const std::string name = get_str(j, key, "None");
  for (const auto& [a, ours] : upscaler_names())
    if (a == name && pipeline::hires_in_pixels(ours)) return ours;
  throw bad(std::string(key) + ": \"" + name + "\" is not available here (known: " + known_names(false) + ")");
}

// A1111's extras sizes: by a factor (int(side x factor)), or to a box, either
// covering it and centre-cropped or scaled by the larger ratio alone
struct ExtrasSize {
  int64_t h, w;               // resized to
  int64_t crop_h = 0, crop_w = 0;  // then centre-cropped to (0: no crop)
};
ExtrasSize extras_size(const json& j, int64_t h, int64_t w, const Limits& lim) {
  const int64_t mode = get_int(j, "resize_mode", 0);
  ExtrasSize s{};
  double f = 0;
  if (mode == 0) {
    f = get_num(j, "upscaling_resize", 2.0);
    if (!(f > 0 && f <= 8)) throw bad("upscaling_resize: expected a factor in (0, 8], got " + json(f).dump());
  } else if (mode == 1) {
    const int64_t tw = get_int(j, "upscaling_resize_w", 512), th = get_int(j, "upscaling_resize_h", 512);
    if (tw < 1 || th < 1 || tw > pipeline::kMaxSide || th > pipeline::kMaxSide)
      throw bad("upscaling_resize_w/_h: expected 1 to " + std::to_string(pipeline::kMaxSide) + ", got " +
                std::to_string(tw) + "x" + std::to_string(th));
    f = std::max(double(tw) / w, double(th) / h);
    if (get_bool(j, "upscaling_crop", true)) s.crop_w = tw, s.crop_h = th;
  } else {
    throw bad("resize_mode: expected 0 (scale by upscaling_resize) or 1 (to upscaling_resize_w x _h), got " +
              std::to_string(mode));
  }
  s.w = std::max<int64_t>(1, static_cast<int64_t>(w * f));
  s.h = std::max<int64_t>(1, static_cast<int64_t>(h * f));
  s.crop_w = std::min(s.crop_w, s.w), s.crop_h = std::min(s.crop_h, s.h);
  if (s.w > pipeline::kMaxSide || s.h > pipeline::kMaxSide || s.w * s.h > 16 * lim.max_pixels)
    throw bad("upscaled size " + std::to_string(s.w) + "x" + std::to_string(s.h) + ": more than this server's " +
              std::to_string(16 * lim.max_pixels) + " pixels (16x --max-pixels) or " + std::to_string(pipeline::kMaxSide) +
              " a side");
  return s;
}
}  // namespace

json extra_single_image(const std::string& body, const Limits& lim) {
  const json j = parse_object(body);
  for (const char* k : {"gfpgan_visibility", "codeformer_visibility"})
    if (get_num(j, k, 0.0) != 0.0) throw bad(std::string(k) + ": no face restorer on this server");
  const std::string b64 = get_str(j, "image", "");
  if (b64.empty()) throw bad("image: required (a base64 PNG or JPEG)");
  const auto img = decode_b64_image(b64, 3, "image", lim);
  const auto up1 = image_upscaler_of(j, "upscaler_1");
  const auto up2 = image_upscaler_of(j, "upscaler_2");
  const double vis = get_num(j, "extras_upscaler_2_visibility", 0.0);
  if (!(vis >= 0 && vis <= 1)) throw bad("extras_upscaler_2_visibility: expected 0 to 1, got " + json(vis).dump());
  const auto s = extras_size(j, img.size(1), img.size(2), lim);
  auto out = pipeline::upscale_image(img, s.h, s.w, up1);
  if (vis > 0 && up2 != up1) out = out * (1 - vis) + pipeline::upscale_image(img, s.h, s.w, up2) * vis;  // PIL's blend
  if (s.crop_w) out = centre_crop(out, s.crop_h, s.crop_w);
  return {{"html_info", ""}, {"image", io::base64_encode(io::encode_png(out.contiguous()))}};
}

std::pair<int64_t, int64_t> parse_size(const std::string& size, const Limits& lim) {
  const auto x = size.find('x');
  int64_t w = 0, h = 0;
  try {
    size_t a = 0, b = 0;
    if (x == std::string::npos) throw std::invalid_argument(size);
    w = std::stoll(size.substr(0, x), &a);
    h = std::stoll(size.substr(x + 1), &b);
    if (a != x || b != size.size() - x - 1) throw std::invalid_argument(size);
  } catch (const std::exception&) {
    throw bad("size: expected \"WIDTHxHEIGHT\" such as \"512x512\", got \"" + size + "\"");
  }
  check_size(w, h, lim);
  return {w, h};
}

Job parse_openai(const std::string& body, const Limits& lim) {
  const json j = parse_object(body);
  Job job;
  auto& r = job.req;
  if (!j.contains("prompt")) throw bad("prompt: required");
  r.prompt = get_str(j, "prompt", "");
  const std::string fmt = get_str(j, "response_format", "b64_json");
  if (fmt == "url") throw bad("response_format: \"url\" is not served (images are not stored); use \"b64_json\"");
  if (fmt != "b64_json") throw bad("response_format: expected \"b64_json\", got \"" + fmt + "\"");
  r.batch = get_int(j, "n", 1);
  check_count(r.batch, lim);
  std::tie(r.width, r.height) = parse_size(get_str(j, "size", "512x512"), lim);
  r.negative_prompt = get_str(j, "negative_prompt", "");
  r.steps = get_int(j, "steps", 20);
  check_steps(r.steps, lim);
  r.seed = get_int(j, "seed", -1);
  if (r.seed < -1) throw bad("seed: expected -1 (random) or >= 0");
  r.cfg_scale = get_num(j, "cfg_scale", 7.0);
  if (!std::isfinite(r.cfg_scale)) throw bad("cfg_scale: expected a finite number");
  job.sampler_name = get_str(j, "sampler", "euler_a");
  set_sampler(r, job.sampler_name, get_str(j, "scheduler", ""));
  return job;
}

}  // namespace ldm::serve

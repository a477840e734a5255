// The HTTP routes of `ldm serve`: A1111's /sdapi/v1, OpenAI's /v1/images,
// the web page, authentication, CORS and JSON errors for every failure.
#include "tools/ldm/serve/routes.h"

#include <atomic>
#include <chrono>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "ldm/error.h"
#include "ldm/io/base64.h"
#include "ldm/io/image.h"
#include "ldm/modules/encoders/embeddings.h"
#include "ldm/models/diffusion/samplers/sampler.h"
#include "tools/ldm/serve/page.h"

namespace ldm::serve {

namespace fs = std::filesystem;

namespace {
void send(httplib::Response& res, int status, const json& body) {
  res.status = status;
  // replace, not throw: png-info echoes text chunks that need not be UTF-8
  res.set_content(body.dump(-1, ' ', false, json::error_handler_t::replace), "application/json");
}
void send_error(httplib::Response& res, int status, const std::string& error, const std::string& detail) {
  send(res, status, error_body(error, detail));
  if (status == 429) res.set_header("Retry-After", "2");
}

// Whether the client of `req` closed its connection: its socket is gone or
// in CLOSE_WAIT in the kernel's table (httplib 0.11 gives handlers no socket).
bool client_gone(int server_port, const httplib::Request& req) {
  for (const char* table : {"/proc/net/tcp", "/proc/net/tcp6"}) {
    std::ifstream f(table);
    std::string line;
    std::getline(f, line);  // header
    while (std::getline(f, line)) {
      std::istringstream ss(line);
      std::string sl, local, remote, state;
      ss >> sl >> local >> remote >> state;
      const auto lp = std::stoi(local.substr(local.rfind(':') + 1), nullptr, 16);
      const auto rp = std::stoi(remote.substr(remote.rfind(':') + 1), nullptr, 16);
      if (lp == server_port && rp == req.remote_port) return state != "01";  // 01 = ESTABLISHED
    }
  }
  return true;
}

// Waits for the job; a client that leaves while it waits gives up its place.
Outcome wait(Worker::Ticket& t, int port, const httplib::Request& req) {
  while (t.result.wait_for(std::chrono::milliseconds(100)) != std::future_status::ready) {
    if (client_gone(port, req)) {
      t.abandoned->store(true);
      return {499, "client gone", "", {}, {}};
    }
  }
  return t.result.get();
}

std::string png_b64(const pipeline::GenerateResult& r, int64_t i) {
  return io::base64_encode(io::encode_png(r.images[i], {{"parameters", r.infotexts.at(i)}}));
}

json a1111_info(const Job& job, const Outcome& out) {
  json seeds = json::array(), prompts = json::array(), infotexts = json::array();
  for (size_t k = 0; k < out.results.size(); ++k)
    for (int64_t i = 0; i < out.results[k].images.size(0); ++i) {
      seeds.push_back(out.results[k].seeds.at(i));
      prompts.push_back(job.req.prompt);
      infotexts.push_back(out.results[k].infotexts.at(i));
    }
  const auto& r = job.req;
  double seconds = 0;
  for (const auto& res : out.results) seconds += res.timings.total;
  return {{"seed", out.seeds.empty() ? r.seed : out.seeds[0]},
          {"generation_seconds", seconds},  // inside generate(): the rest of a request's time is the server's
          {"all_seeds", seeds},
          {"prompt", r.prompt},
          {"all_prompts", prompts},
          {"negative_prompt", r.negative_prompt},
          {"width", r.width},
          {"height", r.height},
          {"sampler_name", job.sampler_name},
          {"cfg_scale", r.cfg_scale},
          {"steps", r.steps},
          {"infotexts", infotexts}};
}

// The model directory's checkpoints: (title, file).
std::vector<std::pair<std::string, std::string>> list_files(const std::string& dir,
                                                            std::initializer_list<const char*> exts) {
  std::vector<std::pair<std::string, std::string>> v;
  if (dir.empty() || !fs::is_directory(dir)) return v;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (!e.is_regular_file()) continue;
    for (const char* x : exts)
      if (e.path().extension() == x) v.emplace_back(e.path().filename().string(), e.path().string());
  }
  std::sort(v.begin(), v.end());
  return v;
}

// The answer to a request no route saw: httplib refused it (unknown path, a
// body too large, a POST whose body it could not read).
json unrouted_error(const httplib::Request& req, int status, size_t max_body) {
  if (status == 404) return error_body("not found", "no such route (see /sdapi/v1/... and /v1/images/...)");
  // httplib caps form-urlencoded bodies at its own compile-time limit, far below ours
  if (status == 413 && req.get_header_value("Content-Type").rfind("application/x-www-form-urlencoded", 0) == 0)
    return error_body("request body too large",
                      "form-urlencoded bodies over " + std::to_string(CPPHTTPLIB_FORM_URL_ENCODED_PAYLOAD_MAX_LENGTH) +
                          " bytes are refused; send JSON (Content-Type: application/json)");
  if (status == 413)
    return error_body("request body too large",
                      "the body is over the server's limit of " + std::to_string(max_body) + " bytes");
  const bool bodiless = (req.method == "POST" || req.method == "PUT") && !req.has_header("Content-Length") &&
                        req.get_header_value("Transfer-Encoding").find("chunked") == std::string::npos;
  if (status == 400 && bodiless)  // httplib 0.11 reads no body without a length and refuses the request
    return error_body("invalid request", req.method + " " + req.path +
                                             ": no Content-Length header; send a body (\"{}\" where no fields are needed)");
  return error_body("error", "HTTP status " + std::to_string(status) + " (the request could not be read)");
}

class Routes {
 public:
  Routes(httplib::Server& s, Worker& w, const ServeOptions& o) : s_(s), w_(w), o_(o) {}

  void add() {
    s_.set_payload_max_length(o_.max_body);
    s_.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) { return gate(req, res); });
    s_.set_error_handler([this](const httplib::Request& req, httplib::Response& res) {
      if (!res.body.empty()) return;
      send(res, res.status, unrouted_error(req, res.status, o_.max_body));
    });
    s_.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
      try {
        std::rethrow_exception(ep);
      } catch (const std::exception& e) {
        std::string what = e.what();
        send_error(res, 500, "internal error", what.substr(0, what.find('\n')));  // no backtraces to clients
      }
    });
    s_.Get("/", [](const httplib::Request&, httplib::Response& res) { res.set_content(kPage, "text/html; charset=utf-8"); });
    s_.Post("/sdapi/v1/txt2img", guarded([this](auto& q, auto& r) { a1111(q, r, false); }));
    s_.Post("/sdapi/v1/img2img", guarded([this](auto& q, auto& r) { a1111(q, r, true); }));
    s_.Get("/sdapi/v1/progress", guarded([this](auto& q, auto& r) { progress(q, r); }));
    s_.Post("/sdapi/v1/interrupt", guarded([this](auto&, auto& r) {
      w_.interrupt();
      send(r, 200, json::object());
    }));
    s_.Get("/sdapi/v1/options", guarded([this](auto&, auto& r) {
      send(r, 200, {{"sd_model_checkpoint", w_.checkpoint()}, {"CLIP_stop_at_last_layers", std::max<int64_t>(1, clip_skip_)}});
    }));
    s_.Post("/sdapi/v1/options", guarded([this](auto& q, auto& r) { options(q, r); }));
    s_.Get("/sdapi/v1/sd-models", guarded([this](auto&, auto& r) { models(r); }));
    s_.Get("/sdapi/v1/samplers", guarded([](auto&, auto& r) { samplers(r); }));
    s_.Get("/sdapi/v1/schedulers", guarded([](auto&, auto& r) {
      send(r, 200, json::array({{{"name", "automatic"}, {"label", "Automatic"}}, {{"name", "karras"}, {"label", "Karras"}}}));
    }));
    s_.Get("/sdapi/v1/loras", guarded([this](auto&, auto& r) { loras(r); }));
    s_.Get("/sdapi/v1/embeddings", guarded([this](auto&, auto& r) { embeddings(r); }));
    s_.Post("/sdapi/v1/png-info", guarded([](auto& q, auto& r) { send(r, 200, png_info(q.body)); }));
    // no separate VAE files here (the checkpoint's VAE decodes); the upscalers that need no model
    s_.Get("/sdapi/v1/sd-vae", guarded([](auto&, auto& r) { send(r, 200, json::array()); }));
    s_.Get("/sdapi/v1/upscalers", guarded([](auto&, auto& r) { send(r, 200, a1111_upscalers()); }));
    s_.Get("/sdapi/v1/latent-upscale-modes", guarded([](auto&, auto& r) { send(r, 200, latent_upscale_modes()); }));
    s_.Post("/sdapi/v1/extra-single-image", guarded([this](auto& q, auto& r) { extras(q, r); }));
    // the listings above read their folders on every request: nothing to refresh
    for (const char* what : {"checkpoints", "loras", "vae", "embeddings"})
      s_.Post(std::string("/sdapi/v1/refresh-") + what, guarded([](auto&, auto& r) { send(r, 200, nullptr); }));
    s_.Post("/v1/images/generations", guarded([this](auto& q, auto& r) { openai(q, r); }));
    s_.Post("/v1/images/edits", guarded([this](auto& q, auto& r) { openai_edit(q, r); }));
    s_.Get("/v1/models", guarded([this](auto&, auto& r) { openai_models(r); }));
    if (!o_.cors.empty())
      s_.Options(R"(/.*)", [](const httplib::Request&, httplib::Response& res) { res.status = 204; });
  }

 private:
  using Handler = std::function<void(const httplib::Request&, httplib::Response&)>;
  // HttpError and ldm::Error become JSON 4xx answers.
  static Handler guarded(Handler h) {
    return [h](const httplib::Request& q, httplib::Response& r) {
      try {
        h(q, r);
      } catch (const HttpError& e) {
        send_error(r, e.status, e.error, e.what());
      } catch (const Error& e) {
        send_error(r, 400, "invalid request", e.what());
      }
    };
  }

  // Authentication (Bearer KEY, or Basic with KEY as the password) and CORS.
  httplib::Server::HandlerResponse gate(const httplib::Request& req, httplib::Response& res) {
    if (!o_.cors.empty()) {
      res.set_header("Access-Control-Allow-Origin", o_.cors);
      res.set_header("Access-Control-Allow-Headers", "Authorization, Content-Type");
      res.set_header("Access-Control-Allow-Methods", "GET, POST, OPTIONS");
      if (req.method == "OPTIONS") return httplib::Server::HandlerResponse::Unhandled;
    }
    if (o_.api_key.empty() || authorized(req)) return httplib::Server::HandlerResponse::Unhandled;
    res.set_header("WWW-Authenticate", "Basic realm=\"ldm\"");
    send_error(res, 401, "unauthorized", "this server needs Authorization: Bearer <key> (or Basic auth with the key as password)");
    return httplib::Server::HandlerResponse::Handled;
  }
  bool authorized(const httplib::Request& req) const {
    const auto h = req.get_header_value("Authorization");
    if (h == "Bearer " + o_.api_key) return true;
    if (h.rfind("Basic ", 0) != 0) return false;
    try {
      const auto user_pass = io::base64_decode(h.substr(6));
      const auto colon = user_pass.find(':');
      return colon != std::string::npos && user_pass.substr(colon + 1) == o_.api_key;
    } catch (const Error&) {
      return false;
    }
  }

  void validate(const Job& job) {
    auto p = w_.pipeline();
    p->validate(job.req);
    if (job.hires) p->validate(pipeline::hires_request(job.req, *job.hires, p->facts().factor));  // its size's memory
  }

  void a1111(const httplib::Request& q, httplib::Response& r, bool img2img) {
    auto job = parse_a1111(q.body, img2img, o_.limits);
    if (!job.clip_skip_set) job.req.clip_skip = clip_skip_;  // the server's option (POST /sdapi/v1/options)
    if (job.checkpoint.empty()) validate(job);
    auto t = w_.submit(job);
    auto out = wait(t, o_.port, q);
    if (out.status != 200) return send_error(r, out.status, out.error, out.detail);
    json images = json::array();
    for (const auto& res : out.results)
      for (int64_t i = 0; i < res.images.size(0); ++i) images.push_back(png_b64(res, i));
    send(r, 200, {{"images", images}, {"parameters", job.parameters}, {"info", a1111_info(job, out).dump()}});
  }

  void progress(const httplib::Request& q, httplib::Response& r) {
    auto p = w_.progress();
    const double frac = p.steps ? static_cast<double>(p.step) / p.steps : 0.0;
    const double eta = p.step ? p.elapsed / p.step * (p.steps - p.step) : 0.0;
    json current = nullptr;
    if (q.get_param_value("skip_current_image") != "true" && !p.preview_png_b64.empty()) current = p.preview_png_b64;
    send(r, 200,
         {{"progress", frac},
          {"eta_relative", eta},
          {"state",
           {{"job_count", p.job_count}, {"sampling_step", p.step}, {"sampling_steps", p.steps}, {"interrupted", p.interrupted}}},
          {"current_image", current},
          {"textinfo", p.job_count ? "step " + std::to_string(p.step) + " of " + std::to_string(p.steps) : "idle"}});
  }

  void options(const httplib::Request& q, httplib::Response& r) {
    json j = json::parse(q.body, nullptr, false);
    if (j.is_discarded() || !j.is_object()) throw HttpError(400, "malformed JSON", "expected a JSON object");
    const int64_t skip = a1111_clip_skip(j);  // checked before the checkpoint switch: all or nothing
    if (j.contains("sd_model_checkpoint")) {
      if (!j["sd_model_checkpoint"].is_string()) throw HttpError(400, "invalid request", "sd_model_checkpoint: expected a string");
      auto out = w_.switch_checkpoint(j["sd_model_checkpoint"].get<std::string>());
      if (out.status != 200) return send_error(r, out.status, out.error, out.detail);
    }
    if (j.contains("CLIP_stop_at_last_layers")) clip_skip_ = skip;
    send(r, 200, json::object());
  }

  void models(httplib::Response& r) {
    json v = json::array();
    v.push_back({{"title", fs::path(o_.model).filename().string()},
                 {"model_name", fs::path(o_.model).stem().string()},
                 {"filename", o_.model}});
    for (auto& [name, path] : list_files(o_.models_dir, {".safetensors", ".ckpt"}))
      v.push_back({{"title", name}, {"model_name", fs::path(name).stem().string()}, {"filename", path}});
    send(r, 200, v);
  }

  static void samplers(httplib::Response& r) {
    json v = json::array();
    for (const auto& n : a1111_sampler_names()) v.push_back({{"name", n}, {"aliases", json::array()}, {"options", json::object()}});
    for (const auto& n : sampler_names()) v.push_back({{"name", n}, {"aliases", json::array()}, {"options", json::object()}});
    send(r, 200, v);
  }

  void loras(httplib::Response& r) {
    json v = json::array();
    for (auto& [name, path] : list_files(o_.lora_dir, {".safetensors", ".ckpt", ".pt"}))
      v.push_back({{"name", fs::path(name).stem().string()}, {"alias", fs::path(name).stem().string()}, {"path", path}});
    send(r, 200, v);
  }

  // Upscaling runs on the handler thread, outside the job queue; at most
  // kExtrasAtOnce at a time (each holds up to a few hundred MB), others 429.
  static constexpr int kExtrasAtOnce = 2;
  std::atomic<int64_t> clip_skip_{0};  // A1111's CLIP_stop_at_last_layers option, for requests that do not name one
  std::atomic<int> extras_running_{0};
  void extras(const httplib::Request& q, httplib::Response& r) {
    struct Slot {
      std::atomic<int>& n;
      ~Slot() { --n; }
    } slot{extras_running_};
    if (++extras_running_ > kExtrasAtOnce)
      throw HttpError(429, "busy", std::to_string(kExtrasAtOnce) + " upscales are running; try again shortly");
    send(r, 200, extra_single_image(q.body, o_.limits));
  }

  // A1111's listing: the --embd-dir files whose vectors fit the current
  // model's text encoder ("loaded") and the others ("skipped"; unreadable
  // files there too, with their error). No training metadata: nulls.
  void embeddings(httplib::Response& r) {
    json loaded = json::object(), skipped = json::object();
    if (!o_.embd_dir.empty()) {
      const int64_t width = w_.pipeline()->facts().text_width;
      for (const auto& e : scan_embeddings(o_.embd_dir)) {
        const bool ok = e.error.empty();
        json v = {{"step", nullptr}, {"sd_checkpoint", nullptr}, {"sd_checkpoint_name", nullptr},
                  {"shape", ok ? json(e.vectors.size(1)) : json(nullptr)}, {"vectors", ok ? e.vectors.size(0) : 0}};
        if (!ok) v["error"] = e.error;
        (ok && e.vectors.size(1) == width ? loaded : skipped)[e.name] = v;
      }
    }
    send(r, 200, {{"loaded", loaded}, {"skipped", skipped}});
  }

  void openai_answer(const httplib::Request& q, httplib::Response& r, Job job) {
    validate(job);
    auto t = w_.submit(job);
    auto out = wait(t, o_.port, q);
    if (out.status != 200) return send_error(r, out.status, out.error, out.detail);
    json data = json::array();
    for (const auto& res : out.results)
      for (int64_t i = 0; i < res.images.size(0); ++i) data.push_back({{"b64_json", png_b64(res, i)}, {"revised_prompt", job.req.prompt}});
    send(r, 200, {{"created", static_cast<int64_t>(std::time(nullptr))}, {"data", data}});
  }

  void openai(const httplib::Request& q, httplib::Response& r) { openai_answer(q, r, parse_openai(q.body, o_.limits)); }

  void openai_edit(const httplib::Request& q, httplib::Response& r) {
    if (!q.is_multipart_form_data()) throw HttpError(400, "invalid request", "expected multipart/form-data with image, mask, prompt");
    json j = json::object();
    for (const char* k : {"prompt", "size", "response_format", "negative_prompt", "sampler"})
      if (q.has_file(k)) j[k] = q.get_file_value(k).content;
    for (const char* k : {"n", "steps", "seed"})
      if (q.has_file(k)) {
        try {
          j[k] = std::stoll(q.get_file_value(k).content);
        } catch (const std::exception&) {
          throw HttpError(400, "invalid request", std::string(k) + ": expected an integer");
        }
      }
    if (!q.has_file("image")) throw HttpError(400, "invalid request", "image: required (a PNG or JPEG file part)");
    auto job = parse_openai(j.dump(), o_.limits);
    auto decode = [&](const char* part, int ch) {
      try {
        return io::decode_image(q.get_file_value(part).content, ch, part, o_.limits.max_pixels);
      } catch (const Error& e) {
        throw HttpError(400, "invalid request", e.what());
      }
    };
    job.req.init_image = decode("image", 3);
    job.req.strength = 1.0;
    if (q.has_file("mask")) {  // OpenAI: transparent = edit; a grey mask: white = repaint
      job.req.mask = decode("mask", 1);
    } else {
      job.req.strength = 0.75;
    }
    openai_answer(q, r, std::move(job));
  }

  void openai_models(httplib::Response& r) {
    json data = json::array();
    data.push_back({{"id", fs::path(o_.model).stem().string()}, {"object", "model"}, {"created", 0}, {"owned_by", "ldm"}});
    for (auto& [name, path] : list_files(o_.models_dir, {".safetensors", ".ckpt"}))
      data.push_back({{"id", fs::path(name).stem().string()}, {"object", "model"}, {"created", 0}, {"owned_by", "ldm"}});
    send(r, 200, {{"object", "list"}, {"data", data}});
  }

  httplib::Server& s_;
  Worker& w_;
  const ServeOptions& o_;
};
}  // namespace

std::shared_ptr<void> add_routes(httplib::Server& s, Worker& w, const ServeOptions& o) {
  auto r = std::make_shared<Routes>(s, w, o);
  r->add();
  return r;
}

}  // namespace ldm::serve

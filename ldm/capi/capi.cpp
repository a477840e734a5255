// The C API (include/ldm.h) over pipeline::Pipeline. Every entry point
// catches everything: no C++ exception crosses into C.
#include "ldm.h"

#include <torch/torch.h>

#include <cstring>
#include <limits>
#include <memory>
#include <string>

#include "ldm/error.h"
#include "ldm/pipeline/hires.h"
#include "ldm/pipeline/pipeline.h"

struct ldm_pipeline {
  std::shared_ptr<ldm::pipeline::Pipeline> p;
};

namespace {
thread_local std::string g_error;

const char* str(const char* s, const char* dflt = "") { return s ? s : dflt; }

// Runs f; on an exception records its one-line message and returns `fail`.
template <class F, class R>
R guarded(F&& f, R fail) {
  try {
    g_error.clear();
    return f();
  } catch (const c10::Error& e) {
    g_error = e.what_without_backtrace();
  } catch (const std::exception& e) {
    g_error = e.what();
  } catch (...) {
    g_error = "unknown error";
  }
  auto nl = g_error.find('\n');
  if (nl != std::string::npos) g_error.resize(nl);
  return fail;
}

// [C, H, W] float in [0, 1] from an ldm_image.
torch::Tensor to_tensor(const ldm_image& im, const char* what) {
  if (!im.data || im.width == 0 || im.height == 0 || (im.channels != 1 && im.channels != 3))
    throw ldm::Error(std::string(what) + ": expected width, height > 0, 1 or 3 channels and data");
  auto t = torch::from_blob(im.data, {im.height, im.width, im.channels}, torch::kUInt8);
  return t.permute({2, 0, 1}).to(torch::kFloat32).div(255.0).contiguous();
}

ldm::pipeline::GenerateRequest request(const ldm_generate_params& g) {
  ldm::pipeline::GenerateRequest r;
  r.prompt = str(g.prompt);
  r.negative_prompt = str(g.negative_prompt);
  r.width = g.width;
  r.height = g.height;
  r.steps = g.steps;
  r.cfg_scale = g.cfg_scale;
  r.cfg_sigma_lo = g.cfg_sigma_lo;
  r.cfg_sigma_hi = g.cfg_sigma_hi;
  r.cfg_rescale = g.cfg_rescale;
  r.clip_skip = g.clip_skip;
  r.seed = g.seed;
  r.sampler = str(g.sampler, "euler_a");
  r.schedule = str(g.schedule, "discrete");
  r.batch = g.batch_count;
  r.strength = g.strength;
  if (g.init_resize_latent != 0 && g.init_resize_latent != 1)
    throw ldm::Error("init_resize_latent: expected 0 or 1, got " + std::to_string(g.init_resize_latent));
  r.init_resize_latent = g.init_resize_latent == 1;
  if (g.init_image) r.init_image = to_tensor(*g.init_image, "init_image");
  if (g.mask) r.mask = to_tensor(*g.mask, "mask").mean(0, true);
  return r;
}

ldm::pipeline::HiresOptions hires(const ldm_generate_params& g) {
  ldm::pipeline::HiresOptions h;
  h.scale = g.hires_scale;
  h.strength = g.hires_strength;
  h.steps = g.hires_steps;
  h.upscaler = str(g.hires_upscaler, "latent");
  return h;
}
}  // namespace

extern "C" {

void ldm_load_params_init(ldm_load_params* p) {
  if (!p) return;
  std::memset(p, 0, sizeof *p);
  p->precision = "fp32";
}

ldm_pipeline* ldm_pipeline_load(const ldm_load_params* p) {
  return guarded([&]() -> ldm_pipeline* {
    if (!p) throw ldm::Error("ldm_pipeline_load: params is NULL");
    if (p->n_threads < 0) throw ldm::Error("n_threads: expected >= 0, got " + std::to_string(p->n_threads));
    // libtorch's intra-op pool is the process's: the one setting here that is not per pipeline
    if (p->n_threads > 0) torch::set_num_threads(p->n_threads);
    ldm::pipeline::LoadOptions o;
    o.model = str(p->model_path);
    o.config = str(p->config_path);
    o.vocab = str(p->vocab_path);
    o.precision = str(p->precision, "fp32");
    o.quiet = true;
    return new ldm_pipeline{ldm::pipeline::Pipeline::load(o)};
  }, static_cast<ldm_pipeline*>(nullptr));
}

void ldm_pipeline_free(ldm_pipeline* p) {
  guarded([&] { delete p; return 0; }, 0);
}

void ldm_generate_params_init(ldm_generate_params* p) {
  if (!p) return;
  std::memset(p, 0, sizeof *p);
  p->steps = 20;
  p->cfg_scale = 7.0f;
  p->seed = 42;
  p->sampler = "euler_a";
  p->schedule = "discrete";
  p->batch_count = 1;
  p->strength = 0.75f;
  p->cfg_sigma_hi = std::numeric_limits<float>::infinity();
  p->hires_strength = 0.7f;
  p->hires_upscaler = "latent";
}

int ldm_generate(ldm_pipeline* p, const ldm_generate_params* g, ldm_image** images, int* count) {
  if (images) *images = nullptr;
  if (count) *count = 0;
  return guarded([&]() -> int {
    if (!p || !g || !images || !count) throw ldm::Error("ldm_generate: pipeline, params, images and count are required");
    ldm::pipeline::GenerateCallbacks cb;
    if (g->progress)
      cb.progress = [g](const ldm::pipeline::ProgressInfo& i) {
        g->progress(static_cast<int>(i.step), static_cast<int>(i.steps), i.elapsed, g->user);
      };
    auto res = g->hires_scale != 0 ? ldm::pipeline::generate_hires(*p->p, request(*g), hires(*g), cb)
                                   : p->p->generate(request(*g), cb);
    if (res.status == ldm::pipeline::Status::Cancelled) {
      g_error = res.message;
      return 2;
    }
    if (!res.images_u8.defined()) throw ldm::Error("the model's output is not an image (use the C++ API for latents)");
    const auto& u8 = res.images_u8;  // [N, H, W, C]
    const int n = static_cast<int>(u8.size(0));
    auto* out = static_cast<ldm_image*>(std::calloc(n, sizeof(ldm_image)));
    if (!out) throw ldm::Error("out of memory for the images");
    const size_t bytes = static_cast<size_t>(u8[0].numel());
    for (int i = 0; i < n; ++i) {
      out[i] = {static_cast<uint32_t>(u8.size(2)), static_cast<uint32_t>(u8.size(1)), static_cast<uint32_t>(u8.size(3)),
                static_cast<uint8_t*>(std::malloc(bytes))};
      if (!out[i].data) {
        ldm_free_images(out, i);
        throw ldm::Error("out of memory for the images");
      }
      std::memcpy(out[i].data, u8[i].data_ptr<uint8_t>(), bytes);
    }
    *images = out;
    *count = n;
    return 0;
  }, 1);
}

void ldm_free_images(ldm_image* images, int count) {
  if (!images) return;
  for (int i = 0; i < count; ++i) std::free(images[i].data);
  std::free(images);
}

void ldm_cancel(ldm_pipeline* p) {
  if (p && p->p) p->p->cancel();
}

const char* ldm_last_error(void) { return g_error.c_str(); }

}  // extern "C"

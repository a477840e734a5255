#include "ldm/pipeline/pipeline.h"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <optional>
#include <random>
#include <sstream>

#include "ldm/error.h"
#include "ldm/io/image.h"
#include "ldm/io/mapped_file.h"
#include "ldm/models/diffusion/load.h"
#include "ldm/models/diffusion/samplers/sampler.h"
#include "ldm/modules/attention.h"
#include "ldm/modules/encoders/clip_text.h"
#include "ldm/modules/encoders/embeddings.h"
#include "ldm/modules/encoders/modules.h"
#include "ldm/modules/fast_conv.h"
#include "ldm/pipeline/conditioning.h"
#include "ldm/pipeline/lora_scope.h"
#include "ldm/pipeline/validate.h"
#include "ldm/util/autocast.h"
#include "ldm/util/memory.h"
#include "ldm/util/progress.h"

namespace ldm::pipeline {

namespace {
using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

struct Cancelled {};  // thrown from the sampler's callback, caught in run()

torch::Device model_device(LatentDiffusion& m) {
  auto ps = m.unet()->parameters();
  return ps.empty() ? torch::Device(torch::kCPU) : ps.front().device();
}

int64_t random_seed() {
  std::random_device rd;
  return static_cast<int64_t>(rd());  // 32 bits, as A1111 and stable-diffusion.cpp draw
}

std::vector<torch::Generator> seed_generators(int64_t seed, int64_t n) {
  std::vector<torch::Generator> g;
  for (int64_t i = 0; i < n; ++i) g.push_back(torch::make_generator<at::CPUGeneratorImpl>(seed + i));
  return g;
}

int64_t decoder_width(LatentDiffusion& m) {
  const DDConfig* dd = nullptr;
  if (auto kl = std::dynamic_pointer_cast<AutoencoderKL>(m.first_stage())) dd = &kl->dd;
  if (auto vq = std::dynamic_pointer_cast<VQModel>(m.first_stage())) dd = &vq->dd;
  return dd ? dd->ch * dd->ch_mult.front() : 16;
}

// The A1111 "parameters" text: prompt lines, then every setting that took
// effect and only those (ddim's eta, not karras under ddim), so the text
// regenerates the image.
std::string parameters_text(const GenerateRequest& r, const std::string& prompt_text, int64_t seed, int64_t w, int64_t h,
                            const LoadOptions& o, int64_t default_clip_skip) {
  std::ostringstream p;
  // A1111's names, so that its readers (PNG Info, image sites) take them: its "Uniform"
  // scheduler is k-diffusion's get_sigmas, our discrete schedule
  p << prompt_text << "\nSteps: " << r.steps << ", Sampler: " << a1111_sampler_name(r.sampler);
  if (sampler_uses_sigma_schedule(r.sampler)) p << ", Schedule type: " << (r.schedule == "karras" ? "Karras" : "Uniform");
  else p << ", Discretize: " << r.discretize;
  p << ", CFG scale: " << r.cfg_scale << ", Seed: " << seed << ", Size: " << w << "x" << h
    << ", Model: " << std::filesystem::path(o.model).stem().string();
  if (r.cfg_sigma_lo > 0 || std::isfinite(r.cfg_sigma_hi))
    p << ", CFG interval: " << r.cfg_sigma_lo << "-" << r.cfg_sigma_hi;
  if (r.cfg_rescale > 0) p << ", CFG rescale: " << r.cfg_rescale;
  if (r.clip_skip > 0 && r.clip_skip != default_clip_skip) p << ", Clip skip: " << r.clip_skip;
  if ((r.init_image.defined() || r.init_latents.defined()) && !r.mask.defined())
    p << ", Denoising strength: " << r.strength;
  if (r.mask.defined()) p << ", Inpainting: masked";
  if (r.sampler == "ddim") p << ", Eta: " << r.eta;
  p << ", Precision: " << o.precision;
  if (!o.prediction.empty()) p << ", Prediction: " << o.prediction;
  if (!o.use_ema) p << ", EMA: off";
  if (r.init_noise.defined()) p << ", Init noise: given";
  if (r.init_latents.defined()) p << ", Init latents: given";
  if (r.cond.defined()) p << ", Cond: given";
  if (!o.taesd.empty()) p << ", VAE: " << std::filesystem::path(o.taesd).filename().string();
  if (o.vae_tile > 0) p << ", VAE tiling: " << o.vae_tile << "/" << o.vae_tile_overlap;
  return p.str();
}
}  // namespace

Pipeline::Pipeline(std::shared_ptr<LatentDiffusion> m, LoadOptions o) : m_(std::move(m)), o_(std::move(o)) {
  if (o_.vae_tile > 0) m_->vae_tiling = {o_.vae_tile, o_.vae_tile_overlap, 1};
  if (o_.use_ema && m_->model_ema) ema_ = m_->ema_scope();
  if (!o_.taesd.empty()) load_taesd_parts();
}

// The decoder from the file; the encoder from the same file (AutoencoderTiny)
// or from taesd_encoder.* beside a taesd_decoder.* file.
void Pipeline::load_taesd_parts() {
  namespace fs = std::filesystem;
  taesd_dec_ = load_taesd(o_.taesd, true);
  try {
    taesd_enc_ = load_taesd(o_.taesd, false);
    return;
  } catch (const Error&) {
  }
  auto name = fs::path(o_.taesd).filename().string();
  auto at = name.find("decoder");
  if (at == std::string::npos) return;
  auto enc = fs::path(o_.taesd).parent_path() / name.replace(at, 7, "encoder");
  if (fs::exists(enc)) taesd_enc_ = load_taesd(enc.string(), false);
}

torch::Tensor Pipeline::preview(const torch::Tensor& latents, const std::string& kind) {
  torch::NoGradGuard ng;
  auto z = latents.to(torch::kFloat32).cpu();
  if (kind == "taesd" || (kind == "auto" && taesd_dec_)) {
    if (!taesd_dec_) throw Error("preview taesd: no TAESD loaded (--taesd FILE)");
    return taesd_dec_->forward(z).clamp(0, 1);
  }
  if (kind != "proj" && kind != "auto") throw Error("preview: expected taesd, proj or auto, got \"" + kind + "\"");
  if (z.size(1) != 4) throw Error("preview proj: needs 4 latent channels, got " + std::to_string(z.size(1)));
  // the usual least-squares fit of SD 1.x latents to RGB (a fixed linear map, no weights)
  static const float m[4][3] = {{0.298f, 0.207f, 0.208f}, {0.187f, 0.286f, 0.173f}, {-0.158f, 0.189f, 0.264f},
                                {-0.184f, -0.271f, -0.473f}};
  auto w = torch::from_blob(const_cast<float*>(&m[0][0]), {4, 3}).clone();
  auto rgb = torch::einsum("nchw,ck->nkhw", {z, w});
  auto img = ((rgb + 1) / 2).clamp(0, 1);
  const int64_t f = downsample_factor();
  return f > 1 ? torch::nn::functional::interpolate(
                     img, torch::nn::functional::InterpolateFuncOptions().scale_factor(
                              std::vector<double>{double(f), double(f)}).mode(torch::kNearest))
               : img;
}

Pipeline::~Pipeline() = default;

std::shared_ptr<Pipeline> Pipeline::load(const LoadOptions& o) {
  if (o.precision != "fp32" && o.precision != "bf16")
    throw Error("precision: expected fp32 or bf16, got \"" + o.precision + "\"");
  if (o.model.empty()) throw Error("model: no checkpoint given");
  // checked here, not after sampling (tiling.cpp's own rule: 0 <= overlap < tile)
  if (o.vae_tile < 0 || o.vae_tile_overlap < 0 || (o.vae_tile > 0 && o.vae_tile_overlap >= o.vae_tile))
    throw Error("VAE tiling: expected tile > overlap >= 0 (latent pixels), got tile " + std::to_string(o.vae_tile) +
                ", overlap " + std::to_string(o.vae_tile_overlap));
  const auto t0 = Clock::now();
  ModelLoadOptions lo;
  lo.prediction = o.prediction;
  lo.quiet = o.quiet;
  if (o.precision == "bf16") lo.dtype = torch::kBFloat16;
  auto m = load_latent_diffusion(o.config, o.model, lo);
  if (o.device != "cpu") m->to(torch::Device(o.device));
  return_free_memory();  // conversion temporaries
  std::shared_ptr<Pipeline> p(new Pipeline(std::move(m), o));
  p->load_seconds_ = since(t0);
  return p;
}

std::shared_ptr<Pipeline> Pipeline::from_model(std::shared_ptr<LatentDiffusion> model, LoadOptions o) {
  o.use_ema = false;  // the caller swaps EMA weights itself
  return std::shared_ptr<Pipeline>(new Pipeline(std::move(model), std::move(o)));
}

int64_t Pipeline::downsample_factor() { return m_->first_stage() ? m_->first_stage()->downsample_factor() : 1; }
int64_t Pipeline::default_size() { return m_->options().image_size * downsample_factor(); }
int64_t Pipeline::image_channels() {
  const int64_t ic = m_->first_stage() ? m_->first_stage()->image_channels() : 0;
  return ic ? ic : m_->options().channels;
}

ModelFacts Pipeline::facts() {
  ModelFacts f;
  f.factor = downsample_factor();
  f.unet_factor = int64_t(1) << (m_->unet()->options().channel_mult.size() - 1);
  f.latent_channels = m_->options().channels;
  f.default_size = default_size();
  f.timesteps = m_->options().schedule.timesteps;
  f.image_channels = image_channels();
  f.decoder_width = decoder_width(*m_);
  f.conditioning_key = m_->options().conditioning_key;
  auto te = std::dynamic_pointer_cast<TextEncoder>(m_->cond_stage());
  f.text = static_cast<bool>(te);
  f.text_width = te ? te->transformer().options().width : 0;
  f.text_layers = te ? te->transformer().options().layers : 0;
  f.classes = static_cast<bool>(std::dynamic_pointer_cast<ClassEmbedder>(m_->cond_stage()));
  f.decode_tiled = m_->vae_tiling.tile > 0;
  return f;
}

void Pipeline::validate(const GenerateRequest& r) { pipeline::validate(r, facts()); }

void Pipeline::release(torch::nn::Module& mod) {
  nn::release_fast_conv(mod);
  for (auto& p : mod.parameters()) {
    io::release_pages(p.data_ptr(), p.nbytes());
    p.set_data(torch::empty({0}, p.options()));
  }
  return_free_memory();  // converted weights lived on the heap: give the pages back, not just to tcmalloc
}

GenerateResult Pipeline::generate(const GenerateRequest& r, const GenerateCallbacks& cb) {
  std::lock_guard<std::mutex> lock(mu_);
  cancel_.store(false);
  if (released_)
    throw Error("this pipeline was loaded for one request (release_after_use) and has released its weights");
  validate(r);
  return run(r, cb);
}

std::vector<std::string> Pipeline::attach_tokenizer() {
  auto te = std::dynamic_pointer_cast<TextEncoder>(m_->cond_stage());
  if (!te || te->tokenizer()) return {};
  te->set_tokenizer(std::make_shared<ClipTokenizer>(ClipTokenizer::load(find_clip_vocab(o_.model, o_.vocab))));
  return load_embeddings();
}

std::vector<std::string> Pipeline::load_embeddings() {
  if (o_.embd_dir.empty()) return {};
  auto te = std::dynamic_pointer_cast<TextEncoder>(m_->cond_stage());
  const int64_t width = te->transformer().options().width;
  std::vector<std::string> notes;
  for (const auto& e : scan_embeddings(o_.embd_dir)) {
    if (!e.error.empty()) notes.push_back("embedding skipped: " + e.error);  // as A1111: the others still load
    else if (e.vectors.size(1) == width) te->add_embedding(e.name, e.vectors);  // other models' embeddings: skipped
  }
  return notes;
}

GenerateResult Pipeline::run(const GenerateRequest& r, const GenerateCallbacks& cb) {
  GenerateResult res;
  const auto t0 = Clock::now();
  torch::NoGradGuard ng;
  const auto dev = model_device(*m_);
  Autocast ac(o_.precision == "bf16" ? "bf16" : "32", dev);  // bf16 weights: conv/matmul in bf16 (AMX where present)
  AttentionChunkScope chunk(o_.attention_chunk_elements);
  // Packed conv weights replace the plain ones' mapped pages (a later read
  // faults them in from the file), and bf16 weights converted at load, which
  // have no file (the cache packs further shapes from its packed copy, and
  // writes it back before anything else reads the weight). Not under EMA: the
  // scope writes into them.
  const bool ema_active = static_cast<bool>(ema_);
  std::optional<nn::PackedHookScope> hook;
  if (o_.release_after_use && !ema_active)
    hook.emplace([](const torch::Tensor& w) {
      if (w.scalar_type() == torch::kBFloat16) return io::drop_pages(w.data_ptr(), w.nbytes());
      io::release_pages(w.data_ptr(), w.nbytes());
      return false;
    });

  const auto f = facts();
  const int64_t seed = r.seed == -1 ? random_seed() : r.seed;
  // image i has seed + i, all its noise from its own generator (as A1111 and
  // stable-diffusion.cpp): any image of a batch regenerates alone from its
  // seed; a batch of one is torch.manual_seed(seed); torch.randn(...) on the CPU
  const int64_t n = image_count(r);
  auto gens = seed_generators(seed, n), enc_gens = seed_generators(seed, n);
  auto [w, h] = output_size(r, f);
  torch::Tensor noise;
  if (r.init_noise.defined()) {
    noise = r.init_noise.to(torch::kFloat32);
  } else {
    std::vector<torch::Tensor> rows;
    for (auto& g : gens) rows.push_back(torch::randn({1, f.latent_channels, h / f.factor, w / f.factor}, g));
    noise = torch::cat(rows);
  }
  noise = noise.to(dev);

  GenerateRequest req = r;  // the prompt without its <lora:...> tags
  auto loras = r.loras;
  for (auto& l : take_lora_tags(req.prompt, o_.lora_dir)) loras.push_back(l);
  LoraScope lora(*m_, loras, /*restore=*/!o_.release_after_use);
  res.notes = lora.notes;
  if (r.init_image.defined() && (r.init_image.size(-1) != w || r.init_image.size(-2) != h))
    res.notes.push_back("init image " + std::to_string(r.init_image.size(-1)) + "x" + std::to_string(r.init_image.size(-2)) +
                        (r.init_resize_latent ? " encoded at its own size, its latents resized to the output size "
                                              : " resized to the output size ") +
                        std::to_string(w) + "x" + std::to_string(h) +
                        " (-W/-H choose the output size)");
  if (const int64_t v = visited_timesteps(r.sampler, r.steps, r.discretize, f.timesteps); v != r.steps)
    res.notes.push_back(r.sampler + ": " + std::to_string(r.steps) + " steps visit " + std::to_string(v) +
                        " timesteps (the reference's spacing, every " + std::to_string(f.timesteps / r.steps) +
                        " from timestep 1, as CompVis and A1111 do)");

  const bool text = f.text && !r.cond.defined() && r.class_labels.empty();
  if (text)
    for (auto& note : attach_tokenizer()) res.notes.push_back(note);
  std::optional<ClipSkipScope> skip;  // this request's clip skip, while its text is encoded
  if (auto te = std::dynamic_pointer_cast<TextEncoder>(m_->cond_stage()); te && text) skip.emplace(*te, r.clip_skip);
  auto c = condition(*m_, req, n, r.cfg_scale != 1.0);
  skip.reset();
  // the init image's posterior samples, as the reference's seed_everything(seed) draws them
  Encode encode;
  if (taesd_enc_) encode = [this](const torch::Tensor& x, torch::Generator) { return taesd_enc_->forward((x + 1) / 2); };
  auto start = prepare_image(*m_, req, noise, c, enc_gens, encode);
  if (text && o_.release_after_use) release(*m_->cond_stage());  // done before the UNet's working set grows
  res.timings.conditioning = since(t0);

  GuidedDenoiser d(*m_, c.cond, c.uncond, r.cfg_scale);
  d.set_interval(r.cfg_sigma_lo, r.cfg_sigma_hi);
  d.set_rescale(r.cfg_rescale);
  SampleOptions so;
  so.sampler = r.sampler;
  so.steps = r.steps;
  so.eta = r.eta;
  so.schedule = r.schedule;
  so.discretize = r.discretize;
  so.generators = gens;
  if (start.x0.defined()) {
    so.x0 = start.x0;
    if (start.keep.defined()) so.mask = start.keep;
    else so.strength = r.strength;
  }
  const auto ts = Clock::now();
  int64_t done = 0;
  auto stop = [&] { return cancel_.load() || (cb.cancelled && cb.cancelled()); };
  so.callback = [&](int64_t k, int64_t total, const torch::Tensor& x, const torch::Tensor& x0) {
    done = k + 1;
    if (cb.progress) cb.progress(ProgressInfo{k + 1, total, since(ts), x, x0});
    if (stop()) throw Cancelled{};
  };
  torch::Tensor x;
  try {
    if (stop()) throw Cancelled{};
    x = sample(d, noise, so);
  } catch (const Cancelled&) {
    res.status = Status::Cancelled;
    res.message = "cancelled after " + std::to_string(done) + " of " + std::to_string(r.steps) + " steps";
    res.model_evaluations = d.calls;
    res.timings.total = since(t0);
    return res;
  }
  res.model_evaluations = d.calls;
  res.timings.sampling = since(ts);
  // the UNet is done before the decoder's working set grows (unless an EMA
  // scope will restore the trained weights into it at the end)
  if (o_.release_after_use && !ema_active) release(*m_->unet());
  res.latents = x.to(torch::kFloat32).cpu();

  const auto td = Clock::now();
  if (r.decode) {
    // TAESD takes the UNet's latents as they are and gives [0, 1] images
    auto img = taesd_dec_ ? taesd_dec_->forward(x.to(torch::kFloat32)).clamp(0, 1).cpu()
                          : io::to_unit_range(m_->decode_first_stage(x).to(torch::kFloat32).cpu());
    if (img.size(1) == 1 || img.size(1) == 3) {
      res.images = img;
      res.images_u8 = io::to_uint8(res.images).permute({0, 2, 3, 1}).contiguous();
      w = img.size(3);
      h = img.size(2);
    }
  }
  res.timings.decoding = since(td);
  released_ = o_.release_after_use;
  for (int64_t i = 0; i < n; ++i) res.seeds.push_back(seed + i);
  auto prompt_of = [&](int64_t i) {  // each image's own prompt or label
    if (text && static_cast<int64_t>(req.prompts.size()) == n)
      return req.prompts[i] + (r.negative_prompt.empty() ? "" : "\nNegative prompt: " + r.negative_prompt);
    if (n > 1 && static_cast<int64_t>(r.class_labels.size()) == n) return "class " + std::to_string(r.class_labels[i]);
    return c.prompt_text;
  };
  const auto te = std::dynamic_pointer_cast<TextEncoder>(m_->cond_stage());
  const int64_t default_clip_skip = te ? te->default_clip_skip() : 0;
  for (int64_t i = 0; i < n; ++i) {
    res.infotexts.push_back(parameters_text(r, prompt_of(i), seed + i, w, h, o_, default_clip_skip));
    if (!lora.summary.empty()) res.infotexts.back() += ", Lora: " + lora.summary;
  }
  res.parameters = res.infotexts.front();
  res.timings.total = since(t0);
  return res;
}

}  // namespace ldm::pipeline

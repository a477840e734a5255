// ldm sample / txt2img / img2img / inpaint: flags and files over
// pipeline::generate(); precomputed noise and conditioning can be injected
// (safetensors) to reproduce a reference run exactly.
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <sstream>
#include <tuple>
#include <utility>

#include "ldm/util/memory.h"
#include "ldm/util/number.h"
#include "ldm/error.h"
#include "ldm/io/image.h"
#include "ldm/pipeline/hires.h"
#include "ldm/io/image_file.h"
#include "ldm/io/safetensors.h"
#include "ldm/models/diffusion/samplers/sampler.h"
#include "ldm/models/lora.h"
#include "ldm/pipeline/pipeline.h"
#include "ldm/train/distributed.h"
#include "ldm/util/progress.h"
#include "tools/ldm/commands.h"

namespace ldm::cli {

torch::Tensor load_tensor_arg(const std::string& spec, const std::string& option) {
  // FILE[:name]; the name may be omitted when the file holds one tensor
  std::string file = spec, name;
  auto colon = spec.rfind(':');
  if (colon != std::string::npos && colon > 0 && !std::filesystem::exists(spec)) {
    file = spec.substr(0, colon);
    name = spec.substr(colon + 1);
  }
  auto t = io::load_safetensors(file);
  if (name.empty()) {
    if (t.size() != 1)
      throw Error(option + " " + file + ": holds " + std::to_string(t.size()) + " tensors; name one as FILE:name");
    return t.begin()->second;
  }
  auto it = t.find(name);
  if (it == t.end()) throw Error(option + " " + file + ": no tensor named \"" + name + "\"");
  return it->second;
}

namespace {
struct Opts {
  std::string config, ckpt, out = "outputs/samples", init_noise, cond, uncond, save_latents, sampler = "ddim",
                            schedule = "discrete", discretize = "uniform", labels, prompt, negative, vocab;
  int64_t steps = 50, batch = 1, width = 0, height = 0, seed = 42;
  double eta = 0.0, cfg_scale = 1.0;
  std::string cfg_interval;  // "LO,HI" in sigmas
  double cfg_rescale = 0.0;
  int64_t clip_skip = 0;
  bool no_ema = false, no_grid = false, vae_tiling = false;
  std::string prediction, precision = "fp32";
  int64_t vae_tile = 32, vae_overlap = 8;  // latent units (256 px tiles, 64 px overlap for SD)
  // img2img / inpaint (stable-diffusion.cpp's flags)
  std::string init_image, mask;
  bool resize_latent = false;
  double strength = 0.75;
  pipeline::HiresOptions hires{0.0};  // txt2img --hires-scale (scale 0: off)
  std::string mode = "sample";  // sample | txt2img | img2img | inpaint: the last three write -o as a file
  std::vector<std::string> loras;  // FILE[:MULT]
  std::string lora_dir, embd_dir;
  std::string taesd, preview = "none", preview_path = "preview.png";
  int64_t preview_interval = 1;
  std::string prompts_file;  // one prompt per line, one image each
  int nproc = 1;
  int rank = 0, world = 1;   // this process's share: images [n*rank/world, n*(rank+1)/world)
};

std::pair<double, double> parse_interval(const std::string& s) {
  const auto comma = s.find(',');
  auto bad = [&] { return Error("--cfg-interval: expected LO,HI in sigmas (for example 0.5,10 or 1,inf), got \"" + s + "\""); };
  if (comma == std::string::npos) throw bad();
  auto number = [&](const std::string& t) {
    auto v = parse_double(t);
    if (!v) throw bad();
    return *v;
  };
  return {number(s.substr(0, comma)), number(s.substr(comma + 1))};
}

std::vector<std::string> read_prompts(const std::string& file) {
  std::ifstream in(file);
  if (!in) throw Error("--prompts " + file + ": cannot open");
  std::vector<std::string> v;
  for (std::string line; std::getline(in, line);) {
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
    if (!line.empty()) v.push_back(line);
  }
  if (v.empty()) throw Error("--prompts " + file + ": no prompts (one per line expected)");
  return v;
}

// Several ranks (--nproc or torchrun's variables): each makes a contiguous
// block of the images with their global seeds (seed + index) and names them
// by global index, so the files equal one process's.
int64_t take_share(const Opts& o, pipeline::GenerateRequest& r) {
  if (o.world == 1) return 0;
  if (r.init_noise.defined()) throw Error("--init-noise: not supported with several ranks");
  if (r.seed < 0) throw Error("--seed -1: several ranks need one seed (give --seed N)");
  const int64_t n = r.prompts.empty() ? r.batch : static_cast<int64_t>(r.prompts.size());
  const int64_t lo = n * o.rank / o.world, hi = n * (o.rank + 1) / o.world;
  if (!r.prompts.empty()) r.prompts = std::vector<std::string>(r.prompts.begin() + lo, r.prompts.begin() + hi);
  if (static_cast<int64_t>(r.class_labels.size()) == n)
    r.class_labels = std::vector<int64_t>(r.class_labels.begin() + lo, r.class_labels.begin() + hi);
  r.batch = hi - lo;
  r.seed += lo;
  // one write: every rank prints this at once to a shared stderr, and std::cerr writes each << apart
  std::cerr << "rank " + std::to_string(o.rank) + " of " + std::to_string(o.world) + ": images " + std::to_string(lo) +
                   " to " + std::to_string(hi - 1) + " of " + std::to_string(n) + "\n";
  return lo;
}

std::vector<int64_t> parse_labels(const std::string& s, int64_t n) {
  std::vector<int64_t> v;
  std::stringstream ss(s);
  std::string part;
  while (std::getline(ss, part, ',')) {
    try {
      size_t used = 0;
      v.push_back(std::stoll(part, &used));
      if (used != part.size()) throw std::invalid_argument(part);
    } catch (const std::exception&) {
      throw Error("--class: expected integers separated by commas, got \"" + s + "\"");
    }
  }
  if (v.size() == 1) v.assign(n, v[0]);
  if (static_cast<int64_t>(v.size()) != n)
    throw Error("--class: give one label or one per image (" + std::to_string(n) + "), got " + std::to_string(v.size()));
  return v;
}

pipeline::GenerateRequest request(const Opts& o, pipeline::Pipeline& p) {
  pipeline::GenerateRequest r;
  r.prompt = o.prompt;
  r.negative_prompt = o.negative;
  r.width = o.width;
  r.height = o.height;
  r.batch = o.batch;
  if (!o.prompts_file.empty()) {
    if (!o.prompt.empty()) throw Error("--prompts: give either -p or --prompts FILE");
    r.prompts = read_prompts(o.prompts_file);
    r.batch = static_cast<int64_t>(r.prompts.size());
  }
  r.seed = o.seed;
  r.sampler = o.sampler;
  r.schedule = o.schedule;
  r.discretize = o.discretize;
  r.steps = o.steps;
  r.eta = o.eta;
  r.cfg_scale = o.cfg_scale;
  if (!o.cfg_interval.empty()) std::tie(r.cfg_sigma_lo, r.cfg_sigma_hi) = parse_interval(o.cfg_interval);
  r.cfg_rescale = o.cfg_rescale;
  r.clip_skip = o.clip_skip;
  r.strength = o.strength;
  if (!o.init_noise.empty()) r.init_noise = load_tensor_arg(o.init_noise, "--init-noise");
  if (!o.cond.empty()) r.cond = load_tensor_arg(o.cond, "--cond");
  if (!o.uncond.empty()) r.uncond = load_tensor_arg(o.uncond, "--uncond");
  if (!o.labels.empty()) r.class_labels = parse_labels(o.labels, r.init_noise.defined() ? r.init_noise.size(0) : r.batch);
  if (!o.init_image.empty()) r.init_image = io::load_image(o.init_image, static_cast<int>(p.image_channels()));
  r.init_resize_latent = o.resize_latent;
  if (!o.mask.empty()) r.mask = io::load_image(o.mask, 1);
  for (const auto& spec : o.loras) {
    auto [file, mult] = parse_lora_arg(spec);
    r.loras.push_back({file, mult, mult});
  }
  return r;
}

// -o FILE: FILE, then FILE_1.png ... for a batch (stable-diffusion.cpp's
// layout); `sample`: a directory of numbered PNGs and a grid.
void write_images(const Opts& o, const pipeline::GenerateResult& res, int64_t first) {
  const auto& unit = res.images;
  const int64_t n = unit.size(0);
  auto text = [&](int64_t i) { return std::map<std::string, std::string>{{"parameters", res.infotexts.at(i)}}; };
  if (o.mode != "sample") {
    std::filesystem::path out(o.out);
    if (out.has_parent_path()) std::filesystem::create_directories(out.parent_path());
    for (int64_t i = 0; i < n; ++i) {
      const int64_t g = first + i;  // the global index
      auto p = g == 0 ? out : out.parent_path() / (out.stem().string() + "_" + std::to_string(g) + out.extension().string());
      io::save_image(p.string(), unit[i], text(i));
    }
    std::cerr << "wrote " << n << " image" << (n > 1 ? "s" : "") << " to " << o.out << (n > 1 ? " (and _1, _2 ...)" : "") << "\n";
    return;
  }
  std::filesystem::create_directories(o.out);
  for (int64_t i = 0; i < n; ++i) {
    char name[32];
    std::snprintf(name, sizeof name, "%06lld.png", (long long)(first + i));
    io::save_png((std::filesystem::path(o.out) / name).string(), unit[i], text(i));
  }
  auto nrow = static_cast<int64_t>(std::ceil(std::sqrt(static_cast<double>(n))));
  const bool grid = !o.no_grid && o.world == 1;  // a rank holds only its share
  if (grid) io::save_png((std::filesystem::path(o.out) / "grid.png").string(), io::make_grid(unit, nrow), text(0));
  std::cerr << "wrote " << n << " image" << (n > 1 ? "s" : "") << (grid ? " and grid.png" : "") << " to " << o.out << "\n";
}

void run(const Opts& o) {
  if (o.mode != "sample") io::check_image_extension(o.out);  // before the model loads
  pipeline::LoadOptions lo;
  lo.model = o.ckpt;
  lo.config = o.config;
  lo.vocab = o.vocab;
  lo.precision = o.precision;
  lo.prediction = o.prediction;
  lo.use_ema = !o.no_ema;
  // one request: give each module's memory back once it is done (the hires fix's second pass needs them again)
  lo.release_after_use = o.hires.scale == 0;
  lo.lora_dir = o.lora_dir;
  lo.embd_dir = o.embd_dir;
  lo.taesd = o.taesd;
  if (o.preview == "taesd" && o.taesd.empty()) throw Error("--preview taesd: needs --taesd FILE");
  if (o.preview_interval < 1) throw Error("--preview-interval: expected >= 1, got " + std::to_string(o.preview_interval));
  if (o.vae_tiling) {
    lo.vae_tile = o.vae_tile;
    lo.vae_tile_overlap = o.vae_overlap;
  }
  auto p = pipeline::Pipeline::load(lo);
  std::fprintf(stderr, "loaded %s in %.2f s (peak memory %.2f GB)\n", o.ckpt.c_str(), p->load_seconds(), peak_rss_gb());
  auto r = request(o, *p);
  if (o.hires.scale != 0) {
    if (r.width == 0) r.width = p->default_size();
    if (r.height == 0) r.height = p->default_size();
    p->validate(pipeline::hires_request(r, o.hires, p->facts().factor));  // before the first pass, not after
  }
  const int64_t first = take_share(o, r);
  if (o.world > 1 && r.batch == 0) return;  // more ranks than images
  // the total is the sampler's own count (img2img runs a part; ddim may visit one more)
  std::optional<Progress> prog;
  pipeline::GenerateCallbacks cb;
  int64_t last_step = 0;
  bool second_pass = false;
  cb.progress = [&](const pipeline::ProgressInfo& i) {
    if (prog && i.step < last_step) {  // the hires fix's second pass
      prog->finish("first pass");
      prog.reset();
      second_pass = true;
    }
    last_step = i.step;
    if (!prog) prog.emplace((second_pass ? "hires " : "sample ") + o.sampler, i.steps, 0, i.elapsed);  // made after step 1: its time counts
    prog->update(i.step);
    if (o.preview != "none" && (i.step % o.preview_interval == 0 || i.step == i.steps) && i.denoised.defined()) {
      auto img = p->preview(i.denoised, o.preview);
      io::save_png(o.preview_path, io::make_grid(img, static_cast<int64_t>(std::ceil(std::sqrt(double(img.size(0)))))));
    }
  };
  auto res = o.hires.scale != 0 ? pipeline::generate_hires(*p, r, o.hires, cb) : p->generate(r, cb);
  for (const auto& note : res.notes) std::cerr << "note: " << note << "\n";
  if (!prog) prog.emplace("sample " + o.sampler, 0);
  prog->finish(std::to_string(res.model_evaluations) + " model evaluations; peak memory " +
              std::to_string(peak_rss_gb()).substr(0, 4) + " GB");
  if (!o.save_latents.empty()) io::save_safetensors(o.save_latents, {{"latents", res.latents.contiguous()}});
  if (!res.images.defined()) {
    std::cerr << "note: decoded output has " << p->model().options().channels << " channels, not an image; no PNG written"
              << (o.save_latents.empty() ? " (use --save-latents)" : "") << "\n";
    return;
  }
  std::fprintf(stderr, "decoded in %.2f s; peak memory %.2f GB\n", res.timings.decoding, peak_rss_gb());
  write_images(o, res, first);
}
}  // namespace

void add_generate(CLI::App& app, const std::string& mode) {
  auto o = std::make_shared<Opts>();
  o->mode = mode;
  const bool sdcpp = mode != "sample";
  if (sdcpp) {
    o->out = "output.png";
    o->sampler = "euler_a";
    o->steps = 20;
    o->cfg_scale = 7.0;
  }
  const char* what = mode == "sample"    ? "sample images from a LatentDiffusion/DDPM checkpoint"
                     : mode == "txt2img" ? "text to image (stable-diffusion.cpp's flags)"
                     : mode == "img2img" ? "image to image: -i image, --strength"
                                         : "inpainting: -i image, --mask (white = repaint)";
  auto* sub = app.add_subcommand(mode, what);
  sub->add_option("--config", o->config,
                  "model config: a reference YAML or a built-in name (v1-inference.yaml, v2-inference-v.yaml, ...); "
                  "default: detected from the checkpoint (SD 1.x, 2.x, 2.x-v, inpainting)");
  sub->add_option("--prediction", o->prediction, "eps or v: overrides the config's parameterization");
  sub->add_option("--precision", o->precision,
                  "fp32, or bf16: weights converted on load (half the memory) and conv/matmul in bf16 (AMX/AVX512-BF16 "
                  "CPUs run them 2-3x faster)")
      ->check(CLI::IsMember({"fp32", "bf16"}))
      ->capture_default_str();
  sub->add_option("--ckpt,-m,--model", o->ckpt, "checkpoint (.ckpt, .safetensors, or an ldm train run directory)")->required();
  std::string names;
  for (auto& s : sampler_names()) names += (names.empty() ? "" : ", ") + s;
  sub->add_option("--sampler,--sampling-method", o->sampler, "sampler: " + names)->capture_default_str();
  sub->add_option("--steps", o->steps, "sampling steps")->capture_default_str();
  sub->add_option("--eta", o->eta, "DDIM eta")->capture_default_str();
  sub->add_option("--schedule", o->schedule, "sigma schedule of euler/euler_a/heun/dpm++2m: discrete, karras")->capture_default_str();
  sub->add_option("--discretize", o->discretize, "timestep spacing of ddim/plms/ddpm/dpm_solver++: uniform, quad")->capture_default_str();
  sub->add_option("--cfg-scale", o->cfg_scale, "classifier-free guidance scale (1 = off)")->capture_default_str();
  sub->add_option("--cfg-interval", o->cfg_interval,
                  "guide only at noise levels LO < sigma <= HI, as LO,HI (HI may be inf); the conditional model elsewhere");
  sub->add_option("--clip-skip", o->clip_skip,
                  "text models: the text encoder's state after the k-th layer from the end (A1111's Clip skip: 1 the "
                  "last, 2 the penultimate); 0: the model's own")
      ->capture_default_str();
  sub->add_option("--cfg-rescale,--guidance-rescale", o->cfg_rescale,
                  "rescale the guided prediction toward the conditional one's standard deviation, 0-1 (diffusers' "
                  "guidance_rescale; 0.7 suggested for v-models at high guidance)")
      ->capture_default_str();
  sub->add_option("--seed,-s", o->seed, "seed (noise equals torch.manual_seed(seed); torch.randn on CPU)")->capture_default_str();
  sub->add_option("-b,--batch", o->batch, "images")->capture_default_str();
  sub->add_option("--class", o->labels, "class label, or one per image separated by commas");
  sub->add_option("-p,--prompt", o->prompt, "text prompt (models with a CLIP cond stage)");
  sub->add_option("-n,--negative-prompt", o->negative, "negative prompt (the unconditional side of guidance)");
  sub->add_option("--vocab", o->vocab, "CLIP vocabulary (default: one beside the checkpoint)");
  sub->add_option("-W,--width", o->width, "image width in pixels (default: the config's)");
  sub->add_option("-H,--height", o->height, "image height in pixels (default: the config's)");
  sub->add_option("--init-noise", o->init_noise, "x_T from a safetensors file, FILE[:name]");
  sub->add_option("--cond", o->cond, "conditioning tensor from a safetensors file, FILE[:name]");
  sub->add_option("--uncond", o->uncond, "negative/unconditional conditioning, FILE[:name]");
  sub->add_option("--save-latents", o->save_latents, "write the final latents as \"latents\" to this .safetensors");
  sub->add_flag("--vae-tiling", o->vae_tiling, "decode/encode in overlapping tiles (large images in bounded memory)");
  sub->add_option("--vae-tile-size", o->vae_tile, "tile side in latent pixels")->capture_default_str();
  sub->add_option("--vae-tile-overlap", o->vae_overlap, "tile overlap in latent pixels")->capture_default_str();
  sub->add_option("--taesd", o->taesd, "TAESD weights: decode (and encode) with it instead of the VAE; previews");
  sub->add_option("--preview", o->preview, "write the current x0 estimate while sampling: taesd, proj or none")
      ->check(CLI::IsMember({"taesd", "proj", "none"}))
      ->capture_default_str();
  sub->add_option("--preview-path", o->preview_path, "where the preview PNG goes")->capture_default_str();
  sub->add_option("--preview-interval", o->preview_interval, "steps between previews")->capture_default_str();
  sub->add_option("--lora", o->loras, "merge a LoRA for this run: FILE[:MULT] (repeatable)");
  sub->add_option("--lora-model-dir", o->lora_dir, "where <lora:name:mult> tags in the prompt are looked up");
  sub->add_option("--embd-dir", o->embd_dir, "textual-inversion embeddings: a prompt word equal to a file's stem");
  sub->add_flag("--no-ema", o->no_ema, "use the trained weights, not the EMA weights");
  sub->add_flag("--no-grid", o->no_grid, "write the images only, no grid.png");
  sub->add_option("-o,--output", o->out, sdcpp ? "output image (.png, or .jpg/.jpeg)" : "output directory")->capture_default_str();
  if (mode == "img2img" || mode == "inpaint") {
    sub->add_option("-i,--init-img", o->init_image, "the image to start from")->required();
    sub->add_option("--strength", o->strength, "img2img: how much to change (1 = ignore the image)")->capture_default_str();
    sub->add_flag("--resize-latent", o->resize_latent,
                  "an init image of another size: encode it at its own size and resize its latents (A1111's latent "
                  "upscale), not the image");
  }
  if (mode == "txt2img") {
    sub->add_option("--hires-scale", o->hires.scale,
                    "the hires fix (A1111's): generate, enlarge the latents by this factor (1-4), then img2img them");
    sub->add_option("--hires-upscaler", o->hires.upscaler,
                    "latent (bilinear), latent-nearest, latent-bicubic (the latents); lanczos, nearest (the decoded image, encoded again)")
        ->capture_default_str();
    sub->add_option("--hires-strength", o->hires.strength, "denoising strength of the second pass")->capture_default_str();
    sub->add_option("--hires-steps", o->hires.steps, "steps of the second pass (0: --steps)")->capture_default_str();
  }
  if (mode == "inpaint") sub->add_option("--mask", o->mask, "mask image: white = repaint, black = keep")->required();
  sub->add_option("--prompts", o->prompts_file, "a file with one prompt per line: one image each (seed + line index)");
  sub->add_option("--nproc", o->nproc, "split the images across this many local processes (or set torchrun's RANK/WORLD_SIZE)")
      ->check(CLI::Range(1, 1024));
  sub->callback([o] {
    auto env = dist_env_from_environment();
    if (env.world == 1 && o->nproc > 1) {
      if (int rc = launch_local(o->nproc, free_local_port(), 10)) std::exit(rc);
      return;
    }
    o->rank = env.rank;
    o->world = env.world;
    run(*o);
  });
}

void add_sample(CLI::App& app) {
  for (const char* m : {"sample", "txt2img", "img2img", "inpaint"}) add_generate(app, m);
}

}  // namespace ldm::cli

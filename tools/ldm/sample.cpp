// ldm sample: draw images from a LatentDiffusion/DDPM given its config and a
// checkpoint, with any sampler; precomputed noise and conditioning can be
// injected (safetensors) to reproduce a reference run exactly.
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <sstream>

#include "ldm/error.h"
#include "ldm/modules/fast_conv.h"
#include "ldm/modules/layers.h"
#include "ldm/io/image.h"
#include "ldm/io/mapped_file.h"
#include "ldm/io/safetensors.h"
#include "ldm/models/diffusion/load.h"
#include "ldm/models/diffusion/samplers/sampler.h"
#include "ldm/modules/encoders/clip_text.h"
#include "ldm/util/autocast.h"
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
  bool no_ema = false, no_grid = false, vae_tiling = false;
  std::string prediction, precision = "fp32";
  int64_t vae_tile = 32, vae_overlap = 8;  // latent units (256 px tiles, 64 px overlap for SD)
  // img2img / inpaint (stable-diffusion.cpp's flags)
  std::string init_image, mask;
  double strength = 0.75;
  std::string mode = "sample";  // sample | txt2img | img2img | inpaint: the last three write -o as a file
};

// [1, C, H, W] in [-1, 1] from an image file, resized to h x w.
torch::Tensor read_image(const std::string& path, int channels, int64_t h, int64_t w) {
  auto img = io::load_image(path, channels).unsqueeze(0);
  if (img.size(2) != h || img.size(3) != w)
    img = torch::nn::functional::interpolate(
        img, torch::nn::functional::InterpolateFuncOptions().size(std::vector<int64_t>{h, w}).mode(torch::kBilinear)
                 .align_corners(false).antialias(true));
  return img.clamp(0, 1) * 2 - 1;
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

// A module this run no longer needs: its pages (mapped file) or heap
// (converted weights) go back, lowering the peak of the stages after it.
void release_weights(torch::nn::Module& mod) {
  nn::release_fast_conv(mod);
  for (auto& p : mod.parameters()) {
    io::release_pages(p.data_ptr(), p.nbytes());
    p.set_data(torch::empty({0}, p.options()));
  }
  return_free_memory();  // converted weights lived on the heap: give the pages back, not just to tcmalloc
}

void run(const Opts& o) {
  ModelLoadOptions lo;
  lo.prediction = o.prediction;
  if (o.precision == "bf16") lo.dtype = torch::kBFloat16;
  const auto t_load = std::chrono::steady_clock::now();
  auto m = load_latent_diffusion(o.config, o.ckpt, lo);
  return_free_memory();  // conversion temporaries
  std::fprintf(stderr, "loaded %s in %.2f s (peak memory %.2f GB)\n", o.ckpt.c_str(),
               std::chrono::duration<double>(std::chrono::steady_clock::now() - t_load).count(), peak_rss_gb());
  if (o.vae_tiling) m->vae_tiling = {o.vae_tile, o.vae_overlap, 1};
  torch::manual_seed(o.seed);  // the posterior sample of img2img's encoder, as the reference's seed_everything
  torch::NoGradGuard ng;
  Autocast ac(o.precision == "bf16" ? "bf16" : "32", torch::kCPU);  // bf16 weights: conv/matmul in bf16 (AMX where present)
  auto ema = o.no_ema ? nullptr : m->ema_scope();
  const bool ema_active = !o.no_ema && m->model_ema;
  // Packed conv weights replace the plain ones' mapped pages (a later read
  // faults them in from the file). Not under EMA: the scope writes into them.
  if (!ema_active) nn::set_fast_conv_packed_hook([](const torch::Tensor& w) { io::release_pages(w.data_ptr(), w.nbytes()); });
  auto gen = torch::make_generator<at::CPUGeneratorImpl>(o.seed);  // torch.manual_seed(seed) on CPU

  const auto& mo = m->options();
  const int64_t f = m->first_stage() ? m->first_stage()->downsample_factor() : 1;
  torch::Tensor noise;
  if (!o.init_noise.empty()) {
    noise = load_tensor_arg(o.init_noise, "--init-noise").to(torch::kFloat32);
  } else {
    int64_t h = o.height ? o.height : mo.image_size * f, w = o.width ? o.width : mo.image_size * f;
    if (h % f || w % f) throw Error("-W/-H: must be multiples of " + std::to_string(f) + " (the first stage's factor)");
    noise = torch::randn({o.batch, mo.channels, h / f, w / f}, gen);
  }
  const int64_t n = noise.size(0);

  std::string prompt;
  Cond cond, uncond;
  auto te = std::dynamic_pointer_cast<TextEncoder>(m->cond_stage());
  if (te && (!o.prompt.empty() || !o.negative.empty()))
    te->set_tokenizer(std::make_shared<ClipTokenizer>(ClipTokenizer::load(find_clip_vocab(o.ckpt, o.vocab))));
  if (!o.prompt.empty()) {
    if (!te) throw Error("-p/--prompt: this model's cond stage is not a text encoder (use --class or --cond)");
    // prompt and negative prompt in the same number of 75-token windows (one batch for guidance)
    const size_t k = std::max(te->windows(o.prompt), te->windows(o.negative));
    cond = m->make_cond(m->text_conditioning(std::vector<std::string>(n, o.prompt), k));
    prompt = o.prompt;
    if (o.cfg_scale != 1.0 && o.uncond.empty())
      uncond = m->make_cond(m->text_conditioning(std::vector<std::string>(n, o.negative), k));
    if (!o.negative.empty()) prompt += "\nNegative prompt: " + o.negative;
  } else if (!o.cond.empty()) {
    cond = m->make_cond(load_tensor_arg(o.cond, "--cond").to(torch::kFloat32));
    prompt = "cond " + o.cond;
  } else if (!o.labels.empty()) {
    auto labels = torch::tensor(parse_labels(o.labels, n), torch::kInt64);
    cond = m->make_cond(m->get_learned_conditioning(labels));
    prompt = "class " + o.labels;
  } else if (!mo.conditioning_key.empty()) {
    throw Error("this model is conditional (" + mo.conditioning_key + "): give -p, --class or --cond");
  }
  if (!o.uncond.empty()) uncond = m->make_cond(load_tensor_arg(o.uncond, "--uncond").to(torch::kFloat32));
  else if (uncond.crossattn.defined() || uncond.y.defined() || uncond.concat.defined()) {}
  else if (o.cfg_scale != 1.0 && !o.labels.empty()) uncond = m->make_cond(m->unconditional_conditioning(n));
  else if (o.cfg_scale != 1.0) throw Error("--cfg-scale " + std::to_string(o.cfg_scale) + " needs --uncond (or --class with a ClassEmbedder)");

  SampleOptions so;
  if (!o.init_image.empty()) {
    // img2img: the init image's latents noised to `strength`; inpaint: repaint where the mask is white
    const int64_t H = noise.size(2) * f, W = noise.size(3) * f;
    const int64_t ic = m->first_stage() ? m->first_stage()->image_channels() : 0;
    const int ch = static_cast<int>(ic ? ic : noise.size(1));
    auto img = read_image(o.init_image, ch, H, W).expand({n, ch, H, W}).contiguous();
    auto x0 = m->encode_first_stage(img).to(torch::kFloat32);
    if (!o.mask.empty()) {
      auto mask_px = (read_image(o.mask, 1, H, W) + 1) / 2;  // 1 = repaint
      mask_px = (mask_px >= 0.5).to(torch::kFloat32).expand({n, 1, H, W});
      auto mask_lat = torch::nn::functional::interpolate(
          mask_px, torch::nn::functional::InterpolateFuncOptions()
                       .size(std::vector<int64_t>{noise.size(2), noise.size(3)})
                       .mode(torch::kNearest));
      if (mo.conditioning_key == "hybrid" && m->unet()->options().in_channels == 2 * noise.size(1) + 1) {
        // the 9-channel inpainting UNet: [x, mask, masked-image latents], as SD inpainting checkpoints
        auto masked = m->encode_first_stage(img * (1 - mask_px)).to(torch::kFloat32);
        cond.concat = torch::cat({mask_lat, masked}, 1);
        if (uncond.crossattn.defined()) uncond.concat = cond.concat;
      } else {
        so.x0 = x0;
        so.mask = 1 - mask_lat;  // samplers keep x0 where mask == 1
      }
    } else {
      so.x0 = x0;
      so.strength = o.strength;
    }
  } else if (!o.mask.empty()) {
    throw Error("--mask needs -i/--init-img (the image to inpaint)");
  }
  if (te) release_weights(*te);  // the text encoder is done before the UNet's working set grows
  GuidedDenoiser d(*m, cond, uncond, o.cfg_scale);
  so.sampler = o.sampler;
  so.steps = o.steps;
  so.eta = o.eta;
  so.schedule = o.schedule;
  so.discretize = o.discretize;
  so.generator = gen;
  Progress prog("sample " + o.sampler, o.steps);
  so.callback = [&](int64_t k, int64_t total, const torch::Tensor&, const torch::Tensor&) {
    prog.update(k + 1);
    (void)total;
  };
  auto x = sample(d, noise, so);
  prog.finish(std::to_string(d.calls) + " model evaluations; peak memory " + std::to_string(peak_rss_gb()).substr(0, 4) + " GB");
  // the UNet is done before the decoder's working set grows (unless an EMA
  // scope will restore the trained weights into it at the end)
  if (!ema_active) release_weights(*m->unet());
  const auto t_decode = std::chrono::steady_clock::now();
  if (!o.save_latents.empty()) io::save_safetensors(o.save_latents, {{"latents", x.contiguous()}});

  auto img = m->decode_first_stage(x).to(torch::kFloat32);
  if (img.size(1) != 1 && img.size(1) != 3) {
    std::cerr << "note: decoded output has " << img.size(1) << " channels, not an image; no PNG written"
              << (o.save_latents.empty() ? " (use --save-latents)" : "") << "\n";
    return;
  }
  std::fprintf(stderr, "decoded in %.2f s; peak memory %.2f GB\n",
               std::chrono::duration<double>(std::chrono::steady_clock::now() - t_decode).count(), peak_rss_gb());
  auto unit = io::to_unit_range(img);
  std::ostringstream params;
  params << prompt << "\nSteps: " << o.steps << ", Sampler: " << o.sampler << ", Schedule type: " << o.schedule
         << ", CFG scale: " << o.cfg_scale << ", Seed: " << o.seed << ", Size: " << img.size(3) << "x" << img.size(2)
         << ", Model: " << std::filesystem::path(o.ckpt).stem().string();
  if (o.mode != "sample") {  // -o FILE: FILE, then FILE_1.png ... for a batch (stable-diffusion.cpp's layout)
    std::filesystem::path out(o.out);
    if (out.has_parent_path()) std::filesystem::create_directories(out.parent_path());
    for (int64_t i = 0; i < n; ++i) {
      auto p = i == 0 ? out : out.parent_path() / (out.stem().string() + "_" + std::to_string(i) + out.extension().string());
      io::save_png(p.string(), unit[i], {{"parameters", params.str()}});
    }
    std::cerr << "wrote " << n << " image" << (n > 1 ? "s" : "") << " to " << o.out << (n > 1 ? " (and _1, _2 ...)" : "") << "\n";
    return;
  }
  std::filesystem::create_directories(o.out);
  for (int64_t i = 0; i < n; ++i) {
    char name[32];
    std::snprintf(name, sizeof name, "%06lld.png", (long long)i);
    io::save_png((std::filesystem::path(o.out) / name).string(), unit[i], {{"parameters", params.str()}});
  }
  auto nrow = static_cast<int64_t>(std::ceil(std::sqrt(static_cast<double>(n))));
  if (!o.no_grid)
    io::save_png((std::filesystem::path(o.out) / "grid.png").string(), io::make_grid(unit, nrow),
               {{"parameters", params.str()}});
  std::cerr << "wrote " << n << " images" << (o.no_grid ? "" : " and grid.png") << " to " << o.out << "\n";
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
  sub->add_option("--ckpt,-m", o->ckpt, "checkpoint (.ckpt, .safetensors, or an ldm train run directory)")->required();
  std::string names;
  for (auto& s : sampler_names()) names += (names.empty() ? "" : ", ") + s;
  sub->add_option("--sampler,--sampling-method", o->sampler, "sampler: " + names)->capture_default_str();
  sub->add_option("--steps", o->steps, "sampling steps")->capture_default_str();
  sub->add_option("--eta", o->eta, "DDIM eta")->capture_default_str();
  sub->add_option("--schedule", o->schedule, "sigma schedule of euler/euler_a/heun/dpm++2m: discrete, karras")->capture_default_str();
  sub->add_option("--discretize", o->discretize, "timestep spacing of ddim/plms/ddpm/dpm_solver++: uniform, quad")->capture_default_str();
  sub->add_option("--cfg-scale", o->cfg_scale, "classifier-free guidance scale (1 = off)")->capture_default_str();
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
  sub->add_flag("--no-ema", o->no_ema, "use the trained weights, not the EMA weights");
  sub->add_flag("--no-grid", o->no_grid, "write the images only, no grid.png");
  sub->add_option("-o,--output", o->out, sdcpp ? "output PNG" : "output directory")->capture_default_str();
  if (mode == "img2img" || mode == "inpaint") {
    sub->add_option("-i,--init-img", o->init_image, "the image to start from")->required();
    sub->add_option("--strength", o->strength, "img2img: how much to change (1 = ignore the image)")->capture_default_str();
  }
  if (mode == "inpaint") sub->add_option("--mask", o->mask, "mask image: white = repaint, black = keep")->required();
  sub->callback([o] { run(*o); });
}

void add_sample(CLI::App& app) {
  for (const char* m : {"sample", "txt2img", "img2img", "inpaint"}) add_generate(app, m);
}

}  // namespace ldm::cli

// pipeline::Pipeline: every conditioning mode through generate(), validation
// in one place, cancellation, and independent pipelines on two threads.
#include <fstream>
#include <regex>
#include <thread>

#include "ldm/error.h"
#include "ldm/io/ckpt.h"
#include "ldm/io/image.h"
#include "ldm/io/resize.h"
#include "ldm/io/safetensors.h"
#include "ldm/modules/encoders/clip_text.h"
#include "ldm/pipeline/hires.h"
#include "ldm/pipeline/pipeline.h"
#include "tests/testing.h"
#include "tests/tiny_sd.h"

using namespace ldm;
using pipeline::GenerateRequest;
using pipeline::Pipeline;

namespace {
std::string vocab() { return test::clip_vocab(); }

std::shared_ptr<Pipeline> tiny_sd(int64_t chunk = 32ll << 20) {
  auto o = test::tiny_sd_options();
  o.attention_chunk_elements = chunk;
  return Pipeline::load(o);
}

// A tiny 9-channel inpainting model (conditioning_key hybrid, as
// v1-inpainting-inference.yaml): tiny_sd_v1's weights with conv_in widened by
// random weights for the mask and masked-image channels.
struct Hybrid {
  std::string config, model;
};
Hybrid make_hybrid(const std::string& dir) {
  std::ifstream in(test::fixture("tiny_sd_v1.yaml"));
  std::string y((std::istreambuf_iterator<char>(in)), {});
  y = std::regex_replace(y, std::regex("conditioning_key: crossattn"), "conditioning_key: hybrid");
  y = std::regex_replace(y, std::regex("in_channels: 4"), "in_channels: 9");
  Hybrid h{dir + "/tiny_inpainting.yaml", dir + "/tiny_inpainting.safetensors"};
  std::ofstream(h.config) << y;
  auto w = io::load_weights(test::fixture("tiny_sd_v1.ckpt")).tensors;
  auto& conv_in = w.at("model.diffusion_model.input_blocks.0.0.weight");
  auto g = torch::make_generator<at::CPUGeneratorImpl>(7);
  auto extra = torch::randn({conv_in.size(0), 5, 3, 3}, g) * conv_in.std();
  conv_in = torch::cat({conv_in.to(torch::kFloat32), extra}, 1).contiguous();
  for (auto& [k, t] : w) t = t.contiguous();
  io::save_safetensors(h.model, w);
  return h;
}

std::shared_ptr<Pipeline> load(const Hybrid& h) {
  pipeline::LoadOptions o;
  o.model = h.model;
  o.config = h.config;
  o.vocab = vocab();
  o.quiet = true;
  return Pipeline::load(o);
}

GenerateRequest cat(int64_t seed = 42) {
  GenerateRequest r;
  r.prompt = "a cat";
  r.negative_prompt = "blurry";
  r.steps = 4;
  r.seed = seed;
  return r;
}

std::string error_of(Pipeline& p, const GenerateRequest& r) {
  try {
    p.generate(r);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}
}  // namespace

TEST(Pipeline, ResultHoldsImagesSeedsParametersAndCounts) {
  LDM_REQUIRE_SHARED();
  auto p = tiny_sd();
  auto r = cat();
  r.batch = 2;
  auto res = p->generate(r);
  ASSERT_EQ(res.status, pipeline::Status::Ok);
  EXPECT_EQ(res.images.sizes(), (std::vector<int64_t>{2, 3, 64, 64}));
  EXPECT_EQ(res.images_u8.sizes(), (std::vector<int64_t>{2, 64, 64, 3}));
  EXPECT_TRUE(torch::equal(res.images_u8, io::to_uint8(res.images).permute({0, 2, 3, 1})));
  EXPECT_EQ(res.latents.sizes(), (std::vector<int64_t>{2, 4, 16, 16}));  // first stage factor 4
  EXPECT_EQ(res.seeds, (std::vector<int64_t>{42, 43}));  // image i: seed + i
  EXPECT_NE(res.infotexts.at(1).find("Seed: 43,"), std::string::npos) << res.infotexts.at(1);
  EXPECT_EQ(res.model_evaluations, 4);  // euler_a: one guided (batched) call per step
  EXPECT_EQ(res.parameters.rfind("a cat\nNegative prompt: blurry\nSteps: 4, Sampler: Euler a", 0), 0u) << res.parameters;
  EXPECT_NE(res.parameters.find("Seed: 42, Size: 64x64"), std::string::npos) << res.parameters;
  EXPECT_GT(res.timings.total, 0.0);
  // the same request gives the same pixels; seed -1 draws a seed and records it
  EXPECT_TRUE(torch::equal(p->generate(r).images_u8, res.images_u8));
  // image 1 of the batch regenerates alone from its seed (ancestral sampler: its own noise stream)
  // (up to float rounding between batch sizes; another noise stream would differ everywhere)
  auto alone = p->generate(cat(43)).images[0];
  EXPECT_LT((alone - res.images[1]).abs().max().item<double>(), 0.02);
  EXPECT_GT((alone - res.images[0]).abs().mean().item<double>(), 0.05);
  r.seed = -1;
  r.batch = 1;
  auto rnd = p->generate(r);
  ASSERT_EQ(rnd.seeds.size(), 1u);
  EXPECT_NE(rnd.parameters.find("Seed: " + std::to_string(rnd.seeds[0])), std::string::npos);
  r.seed = rnd.seeds[0];
  EXPECT_TRUE(torch::equal(p->generate(r).images_u8, rnd.images_u8));
}

TEST(Pipeline, BadRequestsAreOneLineErrorsBeforeAnyWork) {
  LDM_REQUIRE_SHARED();
  auto p = tiny_sd();
  auto expect = [&](std::function<void(GenerateRequest&)> edit, const std::string& want) {
    auto r = cat();
    edit(r);
    auto e = error_of(*p, r);
    EXPECT_NE(e.find(want), std::string::npos) << "got: " << e;
    EXPECT_EQ(e.find('\n'), std::string::npos) << e;
  };
  expect([](auto& r) { r.cfg_scale = std::nan(""); }, "cfg scale: expected a finite number, got nan");
  expect([](auto& r) { r.cfg_scale = INFINITY; }, "cfg scale: expected a finite number");
  expect([](auto& r) { r.cfg_sigma_lo = 5; r.cfg_sigma_hi = 1; }, "cfg interval: expected 0 <= low < high");
  expect([](auto& r) { r.cfg_sigma_lo = -1; }, "cfg interval: expected 0 <= low < high");
  expect([](auto& r) { r.cfg_rescale = 1.5; }, "cfg rescale: expected 0 <= phi <= 1, got 1.5");
  expect([](auto& r) { r.width = -64; }, "width: expected a positive number of pixels, got -64");
  expect([](auto& r) { r.width = 100; }, "width: must be a multiple of 16 (the first stage's 4 x the UNet's 4), got 100");
  expect([](auto& r) { r.height = 65536; }, "height: at most 8192 pixels, got 65536");
  expect([](auto& r) { r.batch = 0; }, "batch: expected at least 1 image, got 0");
  expect([](auto& r) { r.batch = 100000; }, "request too large");
  expect([](auto& r) { r.steps = 0; }, "steps: expected 1 to 1000, got 0");
  expect([](auto& r) { r.steps = 5000; }, "steps: expected 1 to 1000, got 5000");
  expect([](auto& r) { r.sampler = "lms"; }, "sampler: unknown \"lms\" (expected one of ddpm, ddim");
  expect([](auto& r) { r.schedule = "linear"; }, "schedule: expected discrete or karras");
  expect([](auto& r) { r.mask = torch::ones({1, 64, 64}); }, "mask: needs an init image");
  expect([](auto& r) { r.init_image = torch::ones({3, 64, 64}); r.strength = 2; }, "strength: expected in (0, 1], got 2");
  expect([](auto& r) { r.class_labels = {1}; }, "class labels: this model has no class embedder");
  expect([](auto& r) { r.seed = -5; }, "seed: expected >= 0, or -1");
}

namespace {
// Two 64x64 images as a first pass, and hires options to 96x96.
GenerateRequest hires_first() {
  auto first = cat();
  first.batch = 2;
  first.width = first.height = 64;
  return first;
}
pipeline::HiresOptions hires_options(int64_t steps, double strength, const std::string& upscaler) {
  pipeline::HiresOptions h;
  h.scale = 1.5;
  h.steps = steps;
  h.strength = strength;
  h.upscaler = upscaler;
  return h;
}
}  // namespace

// The hires fix: the first pass's latents, enlarged (bilinear, computed here),
// as the init latents of an img2img pass at the larger size.
TEST(Pipeline, HiresFixIsImg2ImgOnEnlargedLatents) {
  LDM_REQUIRE_SHARED();
  auto p = tiny_sd();
  auto first = hires_first();
  auto h = hires_options(5, 0.6, "latent");
  auto res = pipeline::generate_hires(*p, first, h);
  ASSERT_EQ(res.status, pipeline::Status::Ok);
  EXPECT_EQ(res.images.sizes(), (std::vector<int64_t>{2, 3, 96, 96}));

  auto one = first;
  one.decode = false;
  auto a = p->generate(one);
  namespace F = torch::nn::functional;
  auto up = F::interpolate(a.latents, F::InterpolateFuncOptions()
                                          .size(std::vector<int64_t>{24, 24})
                                          .mode(torch::kBilinear)
                                          .align_corners(false));
  auto second = first;
  second.width = second.height = 96;
  second.steps = 5;
  second.strength = 0.6;
  second.init_latents = up;
  auto b = p->generate(second);
  EXPECT_TRUE(torch::equal(res.images_u8, b.images_u8));
  EXPECT_EQ(res.model_evaluations, a.model_evaluations + b.model_evaluations);
  EXPECT_EQ(b.model_evaluations, 3);  // img2img at strength 0.6 runs 3 of 5 steps
  // the text names the first pass (its size regenerates it) and the hires settings
  EXPECT_EQ(res.infotexts.at(1).rfind(a.infotexts.at(1), 0), 0u) << res.infotexts.at(1);
  EXPECT_NE(res.parameters.find("Size: 64x64"), std::string::npos) << res.parameters;
  EXPECT_NE(res.parameters.find("Denoising strength: 0.6, Hires upscale: 1.5, Hires steps: 5, Hires upscaler: Latent"),
            std::string::npos)
      << res.parameters;
  // bad options and init latents of the wrong shape: one-line errors
  auto err = [&](const std::function<void()>& f) {
    try {
      f();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  h.scale = 8;
  EXPECT_NE(err([&] { pipeline::generate_hires(*p, first, h); }).find("hires scale: expected 1 to 4, got 8"), std::string::npos);
  h.scale = 2;
  h.upscaler = "esrgan";
  EXPECT_NE(err([&] { pipeline::generate_hires(*p, first, h); }).find("hires upscaler: expected one of latent, latent-nearest, latent-bicubic, lanczos, nearest, got \"esrgan\""),
            std::string::npos);
  second.init_latents = a.latents;
  EXPECT_NE(error_of(*p, second).find("init latents: expected [1 or 2, 4, 24, 24] for 96x96, got [2, 4, 16, 16]"),
            std::string::npos)
      << error_of(*p, second);
  second.init_latents = up;
  second.init_image = torch::ones({3, 96, 96});
  EXPECT_NE(error_of(*p, second).find("init latents: give an init image or init latents, not both"), std::string::npos);
  // a one-shot pipeline would release its UNet after the first pass: refused before it
  auto o = test::tiny_sd_options();
  o.release_after_use = true;
  auto once = Pipeline::load(o);
  h.upscaler = "latent";
  EXPECT_NE(err([&] { pipeline::generate_hires(*once, first, h); }).find("hires fix: this pipeline releases its weights"),
            std::string::npos);
}

// An image upscaler (A1111's Lanczos): the first pass decoded, each image
// enlarged with PIL's Lanczos filter (io::resize_lanczos, tested against PIL's
// formula), then an img2img pass from those images, one per output image.
TEST(Pipeline, HiresFixWithAnImageUpscalerIsImg2ImgOnEnlargedImages) {
  LDM_REQUIRE_SHARED();
  auto p = tiny_sd();
  auto first = hires_first();
  auto h = hires_options(4, 0.5, "lanczos");
  auto res = pipeline::generate_hires(*p, first, h);
  ASSERT_EQ(res.status, pipeline::Status::Ok);
  EXPECT_EQ(res.images.sizes(), (std::vector<int64_t>{2, 3, 96, 96}));

  auto a = p->generate(first);
  auto second = first;
  second.width = second.height = 96;
  second.steps = 4;
  second.strength = 0.5;
  second.init_image = io::resize_lanczos(a.images, 96, 96);
  auto b = p->generate(second);
  EXPECT_TRUE(torch::equal(res.images_u8, b.images_u8));
  EXPECT_EQ(res.model_evaluations, a.model_evaluations + 2);  // strength 0.5 runs 2 of 4 steps
  EXPECT_NE(res.parameters.find("Hires upscaler: Lanczos"), std::string::npos) << res.parameters;
  // the two images started from different enlargements (one init image each)
  EXPECT_FALSE(torch::equal(second.init_image[0], second.init_image[1]));
  h.upscaler = "nearest";
  EXPECT_EQ(pipeline::generate_hires(*p, first, h).images.size(3), 96);
}

// img2img with one init image per output image ([N, C, H, W]): image i starts
// from init image i, as a one-image request with seed + i does.
TEST(Pipeline, InitImagePerOutputImage) {
  LDM_REQUIRE_SHARED();
  auto p = tiny_sd();
  auto r = cat();
  r.width = r.height = 64;
  r.steps = 4;
  r.strength = 0.75;
  torch::manual_seed(3);
  auto imgs = torch::rand({2, 3, 64, 64});
  r.batch = 2;
  r.init_image = imgs;
  auto both = p->generate(r);
  ASSERT_EQ(both.status, pipeline::Status::Ok);
  auto one = r;
  one.batch = 1;
  one.seed = r.seed + 1;
  one.init_image = imgs[1];
  auto second = p->generate(one);
  EXPECT_LT(test::max_abs_err(both.images[1], second.images[0]), 2e-3);
  one.init_image = imgs[0];
  EXPECT_GT(test::max_abs_err(both.images[1], p->generate(one).images[0]), 0.02);  // the other image differs
  r.init_image = torch::rand({3, 3, 64, 64});
  EXPECT_NE(error_of(*p, r).find("init image: expected [C, H, W] or [2, C, H, W] (one per image) with 1 or 3 channels, got [3, 3, 64, 64]"),
            std::string::npos)
      << error_of(*p, r);
}

// An init image of another size with init_resize_latent (A1111's resize_mode
// 3): its latents at its own size, stretched bilinearly to the output's; the
// unmasked half keeps them exactly, which the pixel-resize path does not.
TEST(Pipeline, InitImageLatentResize) {
  LDM_REQUIRE_SHARED();
  auto p = tiny_sd();
  auto r = cat(11);
  r.width = r.height = 64;
  r.init_image = torch::rand({3, 96, 80}, torch::make_generator<at::CPUGeneratorImpl>(3));
  r.init_resize_latent = true;
  r.mask = torch::zeros({1, 64, 64});
  r.mask.narrow(2, 32, 32).fill_(1);  // repaint the right half
  auto res = p->generate(r);
  ASSERT_EQ(res.status, pipeline::Status::Ok);
  auto own = p->model().encode_first_stage(r.init_image.unsqueeze(0) * 2 - 1, torch::make_generator<at::CPUGeneratorImpl>(11));
  ASSERT_EQ(own.sizes(), (std::vector<int64_t>{1, 4, 24, 20}));
  namespace F = torch::nn::functional;
  auto x0 = F::interpolate(own, F::InterpolateFuncOptions().size(std::vector<int64_t>{16, 16}).mode(torch::kBilinear).align_corners(false));
  auto keep = torch::zeros({1, 1, 16, 16});
  keep.narrow(3, 0, 8).fill_(1);
  EXPECT_LT(((res.latents - x0) * keep).abs().max().item<double>(), 1e-5);
  bool noted = false;
  for (const auto& n : res.notes) noted = noted || n.find("init image 80x96 encoded at its own size") != std::string::npos;
  EXPECT_TRUE(noted);
  r.init_resize_latent = false;
  EXPECT_GT(((p->generate(r).latents - x0) * keep).abs().max().item<double>(), 1e-2);
  r.init_resize_latent = true;
  r.init_image = torch::rand({3, 160, 160});
  EXPECT_NE(error_of(*p, r).find("init image: 160x160 is encoded at its own size when its latents are resized; expected at most 4x"),
            std::string::npos)
      << error_of(*p, r);
}

// Clip skip (A1111's): the penultimate block's state through the final layer
// norm, computed here from a full forward's hidden states and the checkpoint's
// norm weights; 1 is the SD 1.x model's own; the setting lasts one request.
TEST(Pipeline, ClipSkipIsThePenultimateStateThroughTheFinalNorm) {
  LDM_REQUIRE_SHARED();
  auto p = tiny_sd();
  auto te = std::dynamic_pointer_cast<FrozenCLIPEmbedder>(p->model().cond_stage());
  ASSERT_TRUE(te);
  auto tok = ClipTokenizer::load(test::clip_vocab());
  auto ids = torch::tensor(tok.tokenize("a cat", 77, tok.eot()), torch::kInt64).view({1, 77});
  torch::NoGradGuard ng;
  auto hs = te->run(ids).hidden_states;
  auto w = io::load_weights(test::fixture("tiny_sd_v1.ckpt")).tensors;
  const std::string ln = "cond_stage_model.transformer.text_model.final_layer_norm.";
  auto want = torch::layer_norm(hs[hs.size() - 2], {64}, w.at(ln + "weight").to(torch::kFloat32), w.at(ln + "bias").to(torch::kFloat32), 1e-5);
  {
    ClipSkipScope skip(*te, 2);
    EXPECT_LT(test::max_abs_err(te->encode_ids(ids), want), 1e-5);
  }
  EXPECT_EQ(te->clip_skip(), 0);
  EXPECT_EQ(te->default_clip_skip(), 1);

  auto r = cat();
  r.width = r.height = 64;
  r.steps = 3;
  auto base = p->generate(r);
  r.clip_skip = 1;
  auto one = p->generate(r);
  EXPECT_TRUE(torch::equal(one.images_u8, base.images_u8));
  EXPECT_EQ(one.parameters.find("Clip skip"), std::string::npos);  // the model's own: not named
  r.clip_skip = 2;
  auto two = p->generate(r);
  EXPECT_FALSE(torch::equal(two.images_u8, base.images_u8));
  EXPECT_NE(two.parameters.find(", Clip skip: 2"), std::string::npos) << two.parameters;
  r.clip_skip = 0;
  EXPECT_TRUE(torch::equal(p->generate(r).images_u8, base.images_u8));  // not left behind
  r.clip_skip = 3;
  EXPECT_NE(error_of(*p, r).find("clip skip: expected 1 to 2 (0: the model's own), got 3"), std::string::npos) << error_of(*p, r);
}

TEST(Pipeline, CancelStopsBetweenStepsWithAStatus) {
  LDM_REQUIRE_SHARED();
  auto p = tiny_sd();
  pipeline::GenerateCallbacks cb;
  std::vector<int64_t> steps;
  cb.progress = [&](const pipeline::ProgressInfo& i) {
    steps.push_back(i.step);
    EXPECT_EQ(i.latents.sizes(), (std::vector<int64_t>{1, 4, 16, 16}));
    if (i.step == 2) p->cancel();
  };
  auto res = p->generate(cat(), cb);
  EXPECT_EQ(res.status, pipeline::Status::Cancelled);
  EXPECT_EQ(res.message, "cancelled after 2 of 4 steps");
  EXPECT_EQ(steps, (std::vector<int64_t>{1, 2}));
  EXPECT_FALSE(res.images.defined());
  // the next request runs in full; a caller's predicate cancels too
  EXPECT_EQ(p->generate(cat()).status, pipeline::Status::Ok);
  cb = {};
  int polled = 0;
  cb.cancelled = [&] { return ++polled > 3; };
  EXPECT_EQ(p->generate(cat(), cb).status, pipeline::Status::Cancelled);
}

// The 9-channel inpainting model end to end: the CLI runs it, and the result
// keeps the image's latents outside the mask (the concat channels carry the
// masked image; the sampler blends the known region back each step).
TEST(Pipeline, HybridInpaintingModel) {
  LDM_REQUIRE_SHARED();
  auto dir = test::temp_dir();
  auto h = make_hybrid(dir);
  auto g = torch::make_generator<at::CPUGeneratorImpl>(3);
  auto image = torch::rand({3, 64, 64}, g);
  auto mask = torch::zeros({1, 64, 64});
  mask.narrow(2, 32, 32).fill_(1);  // repaint the right half
  io::save_png(dir + "/i.png", image);
  io::save_png(dir + "/m.png", mask);
  std::string cmd = std::string(LDM_BINARY) + " inpaint --config " + h.config + " -m " + h.model + " --vocab " + vocab() +
                    " -p \"a cat\" --steps 4 -i " + dir + "/i.png --mask " + dir + "/m.png -o " + dir + "/p.png 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  EXPECT_EQ(io::load_image(dir + "/p.png").sizes(), (std::vector<int64_t>{3, 64, 64}));

  auto p = load(h);
  auto r = cat(11);
  r.init_image = io::load_image(dir + "/i.png");
  r.mask = mask;
  auto res = p->generate(r);
  // the image's latents as the pipeline encodes them (posterior sample from the seed; without grad, as the
  // pipeline: grad mode would store the maps channels-last, other kernels, other float32 rounding)
  torch::Tensor x0;
  {
    torch::NoGradGuard ng;
    x0 = p->model().encode_first_stage(r.init_image.unsqueeze(0) * 2 - 1, torch::make_generator<at::CPUGeneratorImpl>(11));
  }
  auto keep = torch::zeros({1, 1, 16, 16});
  keep.narrow(3, 0, 8).fill_(1);
  EXPECT_TRUE(torch::allclose(res.latents * keep, x0 * keep, 0, 1e-6)) << ((res.latents - x0) * keep).abs().max().item<double>();
  EXPECT_GT(((res.latents - x0) * (1 - keep)).abs().max().item<double>(), 1e-2);  // the masked half was repainted
  // txt2img on the inpainting model (all masked, a grey image) works too
  EXPECT_EQ(p->generate(cat()).images.size(2), 64);
}

// Two pipelines of different models generating interleaved on two threads
// give the pixels each gives alone (no state shared between pipelines; the
// attention chunk budget differs between them on purpose).
TEST(Pipeline, TwoPipelinesOnTwoThreadsMatchEachAlone) {
  LDM_REQUIRE_SHARED();
  auto dir = test::temp_dir();
  auto a = tiny_sd(4096), b = load(make_hybrid(dir));
  std::vector<torch::Tensor> alone_a, alone_b;
  for (int64_t s = 0; s < 3; ++s) {
    alone_a.push_back(a->generate(cat(s)).images_u8);
    alone_b.push_back(b->generate(cat(s)).images_u8);
  }
  EXPECT_FALSE(torch::equal(alone_a[0], alone_b[0]));
  std::vector<torch::Tensor> got_a(3), got_b(3);
  std::thread ta([&] { for (int64_t s = 0; s < 3; ++s) got_a[s] = a->generate(cat(s)).images_u8; });
  std::thread tb([&] { for (int64_t s = 0; s < 3; ++s) got_b[s] = b->generate(cat(s)).images_u8; });
  ta.join();
  tb.join();
  for (int s = 0; s < 3; ++s) {
    EXPECT_TRUE(torch::equal(got_a[s], alone_a[s])) << "pipeline a, seed " << s;
    EXPECT_TRUE(torch::equal(got_b[s], alone_b[s])) << "pipeline b, seed " << s;
  }
}

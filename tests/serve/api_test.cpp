// The server's request parsing on its own (tools/ldm/serve/api.cpp): every
// bad field is a 4xx HttpError naming it; the fuzz corpora replay here.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iterator>

#include "ldm/io/base64.h"
#include "ldm/io/image.h"
#include "ldm/io/image_file.h"
#include "ldm/io/resize.h"
#include "tests/testing.h"
#include "tools/ldm/serve/api.h"
#include "tests/fuzz/fuzz_serve.cpp"  // LLVMFuzzerTestOneInput, replayed below

using namespace ldm;
using namespace ldm::serve;

namespace {
int status_of(const std::function<void()>& f, std::string* detail = nullptr) {
  try {
    f();
  } catch (const HttpError& e) {
    if (detail) *detail = e.what();
    return e.status;
  }
  return 200;
}
}  // namespace

TEST(ServeApi, A1111DefaultsAndSamplerNames) {
  Limits lim;
  auto job = parse_a1111(R"({"prompt": "a cat", "sampler_name": "DPM++ 2M Karras", "steps": 7, "seed": 5,
                             "width": 64, "height": 128, "batch_size": 2, "n_iter": 3, "unknown": [1, 2]})", false, lim);
  EXPECT_EQ(job.req.prompt, "a cat");
  EXPECT_EQ(job.req.sampler, "dpm++2m");
  EXPECT_EQ(job.req.schedule, "karras");
  EXPECT_EQ(job.req.steps, 7);
  EXPECT_EQ(job.req.width, 64);
  EXPECT_EQ(job.req.height, 128);
  EXPECT_EQ(job.req.batch, 2);
  EXPECT_EQ(job.n_iter, 3);
  EXPECT_EQ(job.parameters["cfg_scale"], 7.0);
  EXPECT_EQ(job.parameters["sampler_name"], "DPM++ 2M Karras");
  // A1111's Clip skip: 2 skips a layer; its default 1 leaves the model's own
  EXPECT_EQ(parse_a1111(R"({"override_settings": {"CLIP_stop_at_last_layers": 2}})", false, lim).req.clip_skip, 2);
  EXPECT_EQ(parse_a1111(R"({"override_settings": {"CLIP_stop_at_last_layers": 1}})", false, lim).req.clip_skip, 0);
  auto d = parse_a1111("{}", false, lim);
  EXPECT_EQ(d.req.seed, -1);
  EXPECT_EQ(d.req.sampler, "euler_a");
  EXPECT_EQ(d.req.width, 512);
}

TEST(ServeApi, BadFieldsAre4xxNamingThem) {
  Limits lim;
  const std::pair<std::string, std::string> cases[] = {
      {"{not json", "not valid JSON"},
      {"[1, 2]", "must be a JSON object"},
      {R"({"prompt": 5})", "prompt: expected a string, got number"},
      {R"({"steps": "20"})", "steps: expected an integer, got string"},
      {R"({"steps": 0})", "steps: expected 1 to 1000, got 0"},
      {R"({"steps": 1001})", "steps: expected 1 to 1000, got 1001"},
      {R"({"steps": 2.5})", "steps: expected an integer, got 2.5"},
      {R"({"width": 100})", "width: expected a positive multiple of 8, got 100"},
      {R"({"width": 2048, "height": 2048})", "more than the server's 1048576 pixels"},
      {R"({"sampler_name": "LMS"})", "sampler_name: unknown \"LMS\" (known: DDIM"},
      {R"({"batch_size": 100})", "images per request: expected 1 to 16, got 100"},
      {R"({"seed": -7})", "seed: expected -1 (random) or >= 0"},
      {R"({"cfg_scale": "high"})", "cfg_scale: expected a number, got string"},
      {R"({"override_settings": 3})", "override_settings: expected an object"},
      {R"({"override_settings": {"CLIP_stop_at_last_layers": 0}})", "CLIP_stop_at_last_layers: expected >= 1"},
      {R"({"enable_hr": true, "hr_upscaler": "R-ESRGAN 4x+"})", "hr_upscaler: \"R-ESRGAN 4x+\" is not available here"},
      {R"({"enable_hr": true, "hr_scale": 3})", "width x height: 1536x1536 is more than the server's"},
      {R"({"enable_hr": true, "hr_scale": 0.5})", "hires scale: expected 1 to 4, got 0.5"},
      {R"({"restore_faces": true})", "restore_faces: no face restorer"},
      {R"({"subseed_strength": 0.3})", "subseed_strength: variation seeds"},
      {R"({"alwayson_scripts": {"controlnet": {"args": []}}})", "alwayson_scripts: extensions"},
      {R"({"script_name": "x/y/z plot"})", "script_name: scripts are not available"},
  };
  auto hr = parse_a1111(R"J({"enable_hr": true, "width": 256, "height": 128, "hr_upscaler": "Latent (nearest)",
                             "hr_second_pass_steps": 7})J", false, lim);
  ASSERT_TRUE(hr.hires.has_value());
  EXPECT_EQ(hr.hires->scale, 2.0);  // A1111's defaults
  EXPECT_EQ(hr.hires->strength, 0.7);
  EXPECT_EQ(hr.hires->upscaler, "latent-nearest");
  EXPECT_EQ(hr.hires->steps, 7);
  EXPECT_EQ(hr.parameters["enable_hr"], true);
  // the same fields at their defaults, as clients send them, are fine
  EXPECT_NO_THROW(parse_a1111(R"({"enable_hr": false, "hr_scale": 2, "restore_faces": false, "tiling": false,
      "subseed_strength": 0, "alwayson_scripts": {}, "script_name": null, "refiner_checkpoint": "",
      "styles": ["x"]})", false, lim));
  for (const auto& [body, want] : cases) {
    std::string detail;
    EXPECT_EQ(status_of([&] { parse_a1111(body, false, lim); }, &detail), 400) << body;
    EXPECT_NE(detail.find(want), std::string::npos) << body << " -> " << detail;
  }
  std::string detail;
  EXPECT_EQ(status_of([&] { parse_a1111(R"({"init_images": ["!!!"]})", true, lim); }, &detail), 400);
  EXPECT_NE(detail.find("init_images[0]: not base64"), std::string::npos) << detail;
  EXPECT_EQ(status_of([&] { parse_a1111(R"({"init_images": ["aGVsbG8="]})", true, lim); }, &detail), 400);
  EXPECT_NE(detail.find("init_images[0]: not a PNG, JPEG or BMP image"), std::string::npos) << detail;
  EXPECT_EQ(status_of([&] { parse_a1111(R"({"init_images": []})", true, lim); }, &detail), 400);
}

namespace {
std::string png_b64(const torch::Tensor& img) { return io::base64_encode(io::encode_png(img)); }
torch::Tensor png_of_b64(const std::string& b64) { return io::decode_image(io::base64_decode(b64, "test"), 3, "test"); }
}  // namespace

// The image upscalers that need no model: in the hires fix, in A1111's lists,
// and alone through /sdapi/v1/extra-single-image.
TEST(ServeApi, ImageUpscalersHiresListsAndExtras) {
  Limits lim;
  auto hr = parse_a1111(R"({"enable_hr": true, "width": 64, "height": 64, "hr_upscaler": "Lanczos"})", false, lim);
  EXPECT_EQ(hr.hires->upscaler, "lanczos");
  EXPECT_EQ(parse_a1111(R"({"enable_hr": true, "hr_upscaler": "Nearest", "width": 64, "height": 64})", false, lim).hires->upscaler,
            "nearest");
  EXPECT_EQ(parse_a1111(R"({"enable_hr": true, "hr_upscaler": "None", "width": 64, "height": 64})", false, lim).hires->upscaler,
            "lanczos");  // A1111's "None" still resizes, with Lanczos
  std::vector<std::string> names, modes;
  for (const auto& u : a1111_upscalers()) names.push_back(u["name"]);
  for (const auto& u : latent_upscale_modes()) modes.push_back(u["name"]);
  EXPECT_EQ(names, (std::vector<std::string>{"None", "Lanczos", "Nearest"}));
  EXPECT_EQ(modes, (std::vector<std::string>{"Latent", "Latent (nearest)", "Latent (bicubic)"}));

  torch::manual_seed(4);
  auto img = io::to_uint8(torch::rand({3, 6, 8})).to(torch::kFloat32) / 255;  // exact in a PNG
  auto out = extra_single_image(json{{"image", png_b64(img)}, {"upscaling_resize", 2.5}, {"upscaler_1", "Lanczos"}}.dump(), lim);
  auto big = png_of_b64(out["image"]);
  ASSERT_EQ(big.sizes(), (std::vector<int64_t>{3, 15, 20}));  // int(side x 2.5), as A1111
  EXPECT_LE(test::max_abs_err(big, io::resize_lanczos(img, 15, 20)), 0.5 / 255 + 1e-6);
  // to a box: cover it, then centre-crop (upscaling_crop, the default)
  out = extra_single_image(json{{"image", png_b64(img)}, {"resize_mode", 1}, {"upscaling_resize_w", 16},
                                {"upscaling_resize_h", 16}, {"upscaler_1", "Nearest"}}.dump(), lim);
  auto box = png_of_b64(out["image"]);
  ASSERT_EQ(box.sizes(), (std::vector<int64_t>{3, 16, 16}));
  // PIL's NEAREST: the source pixel under each output pixel's centre
  auto nearest = img.index_select(1, ((torch::arange(16) + 0.5) * 6 / 16).floor().to(torch::kLong))
                     .index_select(2, ((torch::arange(21) + 0.5) * 8 / 21).floor().to(torch::kLong));
  EXPECT_LE(test::max_abs_err(box, nearest.slice(2, 2, 18)), 0.5 / 255 + 1e-6);
  // a second upscaler blended in at its visibility
  out = extra_single_image(json{{"image", png_b64(img)}, {"upscaler_1", "Lanczos"}, {"upscaler_2", "Nearest"},
                                {"extras_upscaler_2_visibility", 0.25}}.dump(), lim);
  auto mix = io::resize_lanczos(img, 12, 16) * 0.75 + img.repeat_interleave(2, 1).repeat_interleave(2, 2) * 0.25;
  EXPECT_LE(test::max_abs_err(png_of_b64(out["image"]), mix), 0.5 / 255 + 1e-6);

  const std::pair<json, std::string> cases[] = {
      {json{{"image", png_b64(img)}, {"upscaler_1", "R-ESRGAN 4x+"}}, "upscaler_1: \"R-ESRGAN 4x+\" is not available here (known: None, Lanczos, Nearest)"},
      {json{{"image", png_b64(img)}, {"gfpgan_visibility", 0.5}}, "gfpgan_visibility: no face restorer"},
      {json{{"image", png_b64(img)}, {"upscaling_resize", 0}}, "upscaling_resize: expected a factor in (0, 8], got 0"},
      {json{{"image", png_b64(img)}, {"resize_mode", 2}}, "resize_mode: expected 0 (scale by upscaling_resize) or 1"},
      {json{{"image", png_b64(img)}, {"resize_mode", 1}, {"upscaling_resize_w", 9000}}, "upscaling_resize_w/_h: expected 1 to 8192"},
      {json{{"image", png_b64(torch::rand({3, 1024, 1024}))}, {"upscaling_resize", 8}}, "upscaled size 8192x8192: more than"},
      {json{{"upscaling_resize", 2}}, "image: required"},
      {json{{"image", png_b64(img)}, {"extras_upscaler_2_visibility", 2}}, "extras_upscaler_2_visibility: expected 0 to 1"},
  };
  for (const auto& [body, want] : cases) {
    std::string detail;
    EXPECT_EQ(status_of([&] { extra_single_image(body.dump(), lim); }, &detail), 400) << want;
    EXPECT_NE(detail.find(want), std::string::npos) << detail;
  }
}

// img2img with several init images: one per output image, which sets the batch
TEST(ServeApi, SeveralInitImagesSetTheBatch) {
  Limits lim;
  auto a = torch::zeros({3, 64, 64}), b = torch::ones({3, 32, 48});
  auto job = parse_a1111(json{{"init_images", {png_b64(a), png_b64(b)}}, {"batch_size", 3}, {"width", 64}, {"height", 64}}.dump(),
                         true, lim);
  EXPECT_EQ(job.req.batch, 2);
  EXPECT_EQ(job.parameters["batch_size"], 2);
  ASSERT_EQ(job.req.init_image.sizes(), (std::vector<int64_t>{2, 3, 64, 64}));  // each resized to the output size
  EXPECT_EQ(job.req.init_image[0].max().item<float>(), 0.0f);
  EXPECT_NEAR(job.req.init_image[1].min().item<float>(), 1.0f, 1e-6);
  auto one = parse_a1111(json{{"init_images", {png_b64(b)}}, {"batch_size", 3}}.dump(), true, lim);
  EXPECT_EQ(one.req.batch, 3);  // one image for every output image
  EXPECT_EQ(one.req.init_image.dim(), 3);
  std::string detail;
  EXPECT_EQ(status_of([&] { parse_a1111(json{{"init_images", {png_b64(a), png_b64(a)}}}.dump(), true, lim); }, &detail), 400);
  EXPECT_NE(detail.find("init_images: 2 images for batch_size 1 (expected 1, or at most batch_size"), std::string::npos) << detail;
  EXPECT_EQ(status_of([&] { parse_a1111(json{{"init_images", {png_b64(a), 5}}, {"batch_size", 2}}.dump(), true, lim); }, &detail), 400);
  EXPECT_NE(detail.find("init_images[1]: expected a base64 image, got number"), std::string::npos) << detail;
}

// img2img inputs of another size, fitted as A1111's resize_mode says: 0 stretches
// (Lanczos), 1 scales to cover and centre-crops, 2 scales to fit and fills, 3
// leaves it to the pipeline (latent upscale); the mask the same way.
TEST(ServeApi, Img2ImgResizeModes) {
  Limits lim;
  torch::manual_seed(5);
  auto img = io::to_uint8(torch::rand({3, 32, 48})).to(torch::kFloat32) / 255;
  auto mask = (torch::rand({1, 32, 48}) > 0.5).to(torch::kFloat32);
  json req = {{"init_images", {png_b64(img)}}, {"mask", png_b64(mask)}, {"width", 64}, {"height", 64}};
  auto just = parse_a1111(req.dump(), true, lim);
  EXPECT_LT(test::max_abs_err(just.req.init_image, io::resize_lanczos(img, 64, 64)), 1e-5);
  req["resize_mode"] = 1;
  auto crop = parse_a1111(req.dump(), true, lim);
  // 48x32 covers 64x64 at 96x64: the middle 64 columns (16 to 80)
  EXPECT_LT(test::max_abs_err(crop.req.init_image, io::resize_lanczos(img, 64, 96).slice(2, 16, 80)), 1e-5);
  EXPECT_EQ(crop.req.mask.sizes(), (std::vector<int64_t>{1, 64, 64}));
  EXPECT_LT(test::max_abs_err(crop.req.mask, io::resize_lanczos(mask, 64, 96).slice(2, 16, 80)), 1e-5);
  // 2: fit inside at 64x42, centred 11 rows down, the edge rows stretched over the margins
  req["resize_mode"] = 2;
  auto fill = parse_a1111(req.dump(), true, lim);
  auto rows = (torch::arange(64) - 11).clamp(0, 41);
  EXPECT_LT(test::max_abs_err(fill.req.init_image, io::resize_lanczos(img, 42, 64).index_select(1, rows)), 1e-5);
  EXPECT_LT(test::max_abs_err(fill.req.mask, io::resize_lanczos(mask, 42, 64).index_select(1, rows)), 1e-5);
  EXPECT_FALSE(fill.req.init_resize_latent);
  // 3: the image as it came, for the pipeline to encode and stretch its latents; the mask stretched as they are
  req["resize_mode"] = 3;
  auto latent = parse_a1111(req.dump(), true, lim);
  EXPECT_TRUE(latent.req.init_resize_latent);
  EXPECT_TRUE(torch::equal(latent.req.init_image, img));
  EXPECT_LT(test::max_abs_err(latent.req.mask, io::resize_lanczos(mask, 64, 64)), 1e-5);
  std::string detail;
  auto two = req;
  two["init_images"] = {png_b64(img), png_b64(torch::rand({3, 32, 32}))};
  two["batch_size"] = 2;
  EXPECT_EQ(status_of([&] { parse_a1111(two.dump(), true, lim); }, &detail), 400);
  EXPECT_NE(detail.find("init_images: resize_mode 3 encodes the images at their own size, so they must share one; got 48x32 and 32x32"),
            std::string::npos) << detail;
  req["resize_mode"] = 4;
  EXPECT_EQ(status_of([&] { parse_a1111(req.dump(), true, lim); }, &detail), 400);
  EXPECT_NE(detail.find("resize_mode: expected 0 (just resize), 1 (crop and resize), 2 (resize and fill) or 3"),
            std::string::npos) << detail;
}

TEST(ServeApi, OpenAiSizesAndFormats) {
  Limits lim;
  auto job = parse_openai(R"({"prompt": "x", "n": 2, "size": "256x128", "steps": 5, "sampler": "ddim"})", lim);
  EXPECT_EQ(job.req.batch, 2);
  EXPECT_EQ(job.req.width, 256);
  EXPECT_EQ(job.req.height, 128);
  EXPECT_EQ(job.req.sampler, "ddim");
  std::string detail;
  EXPECT_EQ(status_of([&] { parse_openai(R"({"prompt": "x", "response_format": "url"})", lim); }, &detail), 400);
  EXPECT_NE(detail.find("\"url\" is not served"), std::string::npos);
  EXPECT_EQ(status_of([&] { parse_openai(R"({"prompt": "x", "size": "big"})", lim); }, &detail), 400);
  EXPECT_NE(detail.find("size: expected \"WIDTHxHEIGHT\""), std::string::npos);
  EXPECT_EQ(status_of([&] { parse_openai(R"({"n": 1})", lim); }, &detail), 400);
  EXPECT_NE(detail.find("prompt: required"), std::string::npos);
}

TEST(ServeApi, Base64RoundTripsAndImagesDecode) {
  for (const std::string& s : std::vector<std::string>{"", "a", "ab", "abc", "abcd", std::string("\0\xff\x10", 3)})
    EXPECT_EQ(io::base64_decode(io::base64_encode(s)), s);
  auto img = torch::rand({3, 16, 24});
  auto png = io::encode_png(img);
  auto back = decode_b64_image("data:image/png;base64," + io::base64_encode(png), 3, "x", Limits{});
  EXPECT_TRUE(torch::equal(io::to_uint8(back), io::to_uint8(img)));
  Limits tiny;
  tiny.max_pixels = 100;
  std::string detail;
  EXPECT_EQ(status_of([&] { decode_b64_image(io::base64_encode(png), 3, "x", tiny); }, &detail), 400);
  EXPECT_NE(detail.find("16 is larger than 100 pixels"), std::string::npos) << detail;
}

// Replays the fuzzer's corpora (tests/fuzz/corpus_serve_*) through the
// fuzz target itself: nothing but HttpError may come out of the parsers.
TEST(ServeApi, FuzzCorporaReplay) {
  namespace fs = std::filesystem;
  int n = 0;
  for (const char* dir : {"corpus_serve_json", "corpus_serve_image"}) {
    const fs::path d = fs::path(LDM_SOURCE_DIR) / "tests/fuzz" / dir;
    for (const auto& e : fs::directory_iterator(d)) {
      std::ifstream f(e.path(), std::ios::binary);
      std::string data((std::istreambuf_iterator<char>(f)), {});
      EXPECT_EQ(LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(data.data()), data.size()), 0) << e.path();
      ++n;
    }
  }
  EXPECT_GT(n, 0) << "no corpus files found";
}

// png-info reads back what our writers put in images (PNG tEXt, JPEG comment)
// and splits the infotext as A1111's parse_generation_parameters does.
TEST(ServeApi, PngInfoReadsOurImagesText) {
  const std::string infotext =
      "a cat, \"quoted\"\nsecond line\nNegative prompt: blurry\nSteps: 4, Sampler: Euler a, CFG scale: 7, Seed: 42, "
      "Size: 64x48, Lora hashes: \"a: 1, b: 2\", Model: tiny";
  auto img = torch::rand({3, 8, 8});
  const std::vector<std::string> files = {io::encode_png(img, {{"parameters", infotext}, {"Software", "ldm"}}),
                                          io::encode_jpeg(img, infotext)};
  for (const auto& bytes : files) {
    auto j = png_info(json{{"image", io::base64_encode(bytes)}}.dump());
    EXPECT_EQ(j["info"], infotext);
    const auto& p = j["parameters"];
    EXPECT_EQ(p["Prompt"], "a cat, \"quoted\"\nsecond line");
    EXPECT_EQ(p["Negative prompt"], "blurry");
    EXPECT_EQ(p["Steps"], "4");
    EXPECT_EQ(p["Sampler"], "Euler a");
    EXPECT_EQ(p["Size-1"], "64");
    EXPECT_EQ(p["Size-2"], "48");
    EXPECT_EQ(p["Lora hashes"], "a: 1, b: 2");
    EXPECT_EQ(p["Model"], "tiny");
  }
  auto png = png_info(json{{"image", "data:image/png;base64," + io::base64_encode(io::encode_png(img, {{"Software", "x"}}))}}.dump());
  EXPECT_EQ(png["info"], "");
  EXPECT_EQ(png["items"]["Software"], "x");
  // a prompt without a settings line is all prompt
  EXPECT_EQ(parse_infotext("just a prompt, with: one colon")["Prompt"], "just a prompt, with: one colon");
  std::string detail;
  EXPECT_EQ(status_of([&] { png_info(R"({"image": "!!!"})"); }, &detail), 400);
  EXPECT_NE(detail.find("image: not base64"), std::string::npos) << detail;
  EXPECT_EQ(status_of([&] { png_info(R"({})"); }, &detail), 400);
  EXPECT_NE(detail.find("image: required"), std::string::npos) << detail;
  // a PNG whose text chunk claims more bytes than there are
  std::string cut = io::encode_png(img, {{"parameters", infotext}});
  cut.resize(60);
  EXPECT_EQ(status_of([&] { png_info(json{{"image", io::base64_encode(cut)}}.dump()); }, &detail), 400);
  EXPECT_NE(detail.find("truncated PNG chunk"), std::string::npos) << detail;
}

// The server's request parsing on its own (tools/ldm/serve/api.cpp): every
// bad field is a 4xx HttpError naming it; the fuzz corpora replay here.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iterator>

#include "ldm/io/base64.h"
#include "ldm/io/image.h"
#include "ldm/io/image_file.h"
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

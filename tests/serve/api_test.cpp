// The server's request parsing on its own (tools/ldm/serve/api.cpp): every
// bad field is a 4xx HttpError naming it; the fuzz corpora replay here.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iterator>

#include "ldm/io/base64.h"
#include "ldm/io/image.h"
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
  };
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

// The command line as a new user meets it: unknown commands, run directories
// and built-in config names where a file is expected, metadata that
// regenerates the image, honest step counts, JPEG output, tokenizer windows.
#include <filesystem>
#include <fstream>

#include "ldm/io/ckpt.h"
#include "ldm/io/image.h"
#include "ldm/io/safetensors.h"
#include <nlohmann/json.hpp>
#include "tests/testing.h"

using namespace ldm;
namespace fs = std::filesystem;

namespace {
test::CommandResult ldm_run(const std::string& args) { return test::run_command(std::string(LDM_BINARY) + " " + args); }
std::string vocab() { return test::shared_dir() + "/data/bpe_simple_vocab_16e6.txt.gz"; }
std::string tiny_base() {
  return " --config " + test::fixture("tiny_sd_v1.yaml") + " -m " + test::fixture("tiny_sd_v1.ckpt") +
         " -p \"a cat\" --vocab " + vocab();
}
}  // namespace

TEST(CliHygiene, UnknownCommandNamesTheCommands) {
  auto r = ldm_run("txt2im -p x");
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.out.find("ldm: error: unknown command \"txt2im\"; the commands are info, "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("txt2img"), std::string::npos) << r.out;
  EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1) << r.out;
}

// A forgotten value: the next option is not taken as the value; negative
// numbers and values given with '=' still are.
TEST(CliHygiene, AnOptionIsNotAnotherOptionsValue) {
  auto r = ldm_run("img2img -i --resize-latent -p x");
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.out.find("ldm: error: -i: expected a value, got the option --resize-latent"), std::string::npos) << r.out;
  r = ldm_run("train x.yaml --nproc --resume");
  EXPECT_NE(r.out.find("ldm: error: --nproc: expected a value, got the option --resume"), std::string::npos) << r.out;
  auto dir = test::temp_dir();
  r = ldm_run("txt2img" + tiny_base() + " --steps 1 --seed -1 --negative-prompt=--steps -o " + dir + "/a.png");
  EXPECT_EQ(r.rc, 0) << r.out;
  EXPECT_TRUE(fs::exists(dir + "/a.png"));
}

TEST(CliHygiene, BuiltInConfigNamesAndRunDirectoriesWhereFilesAreExpected) {
  auto r = ldm_run("info v1-inference.yaml");
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_NE(r.out.find("859520964"), std::string::npos) << r.out;  // SD 1.x UNet parameters
  r = ldm_run("info v9-inference.yaml");
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.out.find("no built-in config \"v9-inference.yaml\" (have: "), std::string::npos) << r.out;

  // a fake run directory holding the tiny checkpoint's weights as an ldm train run would
  LDM_REQUIRE_SHARED();
  auto dir = test::temp_dir();
  const std::string ck = dir + "/run/checkpoints/step-000000007";
  fs::create_directories(ck);
  ASSERT_EQ(ldm_run("convert " + test::fixture("tiny_sd_v1.ckpt") + " " + ck + "/model.safetensors").rc, 0);
  std::ofstream(ck + "/state.json") << "{\"step\": 7, \"batches\": 7, \"epoch\": 0}";
  fs::copy_file(test::fixture("tiny_sd_v1.yaml"), dir + "/run/config.yaml");
  std::ofstream(dir + "/run/checkpoints/latest") << "step-000000007\n";
  r = ldm_run("info " + dir + "/run");
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_NE(r.out.find("step-000000007/model.safetensors"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find(dir + "/run/config.yaml"), std::string::npos) << r.out;
  r = ldm_run("convert " + dir + "/run " + dir + "/out.safetensors --dtype fp16");
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_EQ(io::load_safetensors(dir + "/out.safetensors").size(), io::load_safetensors(ck + "/model.safetensors").size());
  // txt2img on the run directory without --config: its config.yaml, not SD detection
  r = ldm_run("txt2img --model " + dir + "/run -p cat --steps 2 --vocab " + vocab() + " -o " + dir + "/t.png");
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_NE(r.out.find("wrote 1 image to"), std::string::npos) << r.out;
}

TEST(CliHygiene, ConvertSaysWhatItDrops) {
  LDM_REQUIRE_SHARED();
  auto dir = test::temp_dir();
  const auto in = io::load_weights(test::fixture("tiny_sd_v1.ckpt")).tensors;
  int64_t ema = 0;
  for (auto& [k, v] : in) ema += k.rfind("model_ema.", 0) == 0;
  ASSERT_GT(ema, 0);
  auto r = ldm_run("convert " + test::fixture("tiny_sd_v1.ckpt") + " " + dir + "/a.safetensors");
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_NE(r.out.find("note: " + std::to_string(ema) + " model_ema.* tensors dropped"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("--ema keeps them"), std::string::npos) << r.out;
  EXPECT_EQ(io::load_safetensors(dir + "/a.safetensors").size(), in.size() - ema);
}

// Each PNG's parameters name what took effect: ddim's eta and discretization
// (not the k-samplers' schedule), the precision, the strength of img2img.
TEST(CliHygiene, MetadataRecordsWhatTookEffect) {
  LDM_REQUIRE_SHARED();
  auto dir = test::temp_dir();
  auto r = ldm_run("txt2img" + tiny_base() + " --sampler ddim --schedule karras --eta 0.5 --steps 4 -o " + dir + "/d.png");
  ASSERT_EQ(r.rc, 0) << r.out;
  auto p = io::read_png_text(dir + "/d.png").at("parameters");
  EXPECT_NE(p.find("Sampler: DDIM, Discretize: uniform,"), std::string::npos) << p;
  EXPECT_NE(p.find("Eta: 0.5"), std::string::npos) << p;
  EXPECT_NE(p.find("Precision: fp32"), std::string::npos) << p;
  EXPECT_EQ(p.find("karras"), std::string::npos) << p;
  r = ldm_run("txt2img" + tiny_base() + " --sampler euler --schedule karras --eta 0.5 --steps 4 -o " + dir + "/e.png");
  ASSERT_EQ(r.rc, 0) << r.out;
  p = io::read_png_text(dir + "/e.png").at("parameters");
  EXPECT_NE(p.find("Sampler: Euler, Schedule type: Karras"), std::string::npos) << p;
  EXPECT_EQ(p.find("Eta"), std::string::npos) << p;
  EXPECT_EQ(p.find("Discretize"), std::string::npos) << p;
  // img2img from a 48x80 image: strength recorded, the resize said
  io::save_png(dir + "/in.png", torch::rand({3, 80, 48}));
  r = ldm_run("img2img" + tiny_base() + " --steps 4 --strength 0.5 -i " + dir + "/in.png -o " + dir + "/i.png");
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_NE(r.out.find("note: init image 48x80 resized to the output size 64x64"), std::string::npos) << r.out;
  p = io::read_png_text(dir + "/i.png").at("parameters");
  EXPECT_NE(p.find("Denoising strength: 0.5"), std::string::npos) << p;
  // the hires fix: twice the size, both passes named; a bad option before any work
  r = ldm_run("txt2img" + tiny_base() + " --steps 4 --hires-scale 2 --hires-steps 3 -o " + dir + "/h.png");
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_EQ(io::load_image(dir + "/h.png").sizes(), (std::vector<int64_t>{3, 128, 128}));
  p = io::read_png_text(dir + "/h.png").at("parameters");
  EXPECT_NE(p.find("Size: 64x64"), std::string::npos) << p;
  EXPECT_NE(p.find("Hires upscale: 2, Hires steps: 3, Hires upscaler: Latent"), std::string::npos) << p;
  r = ldm_run("txt2img" + tiny_base() + " --hires-scale 2 --hires-strength 0 -o " + dir + "/h2.png");
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.out.find("hires strength: expected in (0, 1], got 0"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("sample "), std::string::npos) << r.out;
}

// DDIM's reference spacing: 7 steps visit 8 timesteps (shown, and said once);
// 3 steps step past the end, and the nearest counts that work are suggested.
TEST(CliHygiene, DdimStepCountsAreHonest) {
  LDM_REQUIRE_SHARED();
  auto dir = test::temp_dir();
  auto r = ldm_run("txt2img" + tiny_base() + " --sampler ddim --steps 7 -o " + dir + "/d.png");
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_NE(r.out.find("note: ddim: 7 steps visit 8 timesteps"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("8/8"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("8/7"), std::string::npos) << r.out;
  r = ldm_run("txt2img" + tiny_base() + " --sampler ddim --steps 3 -o " + dir + "/e.png");
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.out.find("the nearest counts that work: 2 or 4"), std::string::npos) << r.out;
}

// -o with .jpg writes JPEG (the parameters in its comment); other extensions
// are refused before the model loads.
TEST(CliHygiene, OutputExtensionDecidesTheFormat) {
  LDM_REQUIRE_SHARED();
  auto dir = test::temp_dir();
  auto r = ldm_run("txt2img" + tiny_base() + " --steps 2 -o " + dir + "/x.jpg");
  ASSERT_EQ(r.rc, 0) << r.out;
  std::ifstream in(dir + "/x.jpg", std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), {});
  ASSERT_GT(bytes.size(), 4u);
  EXPECT_EQ(bytes.substr(0, 4), std::string("\xFF\xD8\xFF\xFE", 4));  // SOI, then the comment segment
  EXPECT_NE(bytes.find("Steps: 2, Sampler: Euler a"), std::string::npos);
  EXPECT_EQ(io::load_image(dir + "/x.jpg").sizes(), (std::vector<int64_t>{3, 64, 64}));
  r = ldm_run("txt2img" + tiny_base() + " --steps 2 -o " + dir + "/x.webp");
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.out.find("x.webp: unknown image type \".webp\" (expected .png, .jpg or .jpeg)"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("loaded"), std::string::npos) << r.out;  // refused before loading
}

// tokenize shows what the encoder sees: weights, and 75-token windows.
TEST(CliHygiene, TokenizeShowsWeightsAndWindows) {
  LDM_REQUIRE_SHARED();
  auto r = ldm_run("tokenize \"a (red:1.5) cube\" --vocab " + vocab());
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_NE(r.out.find("\"red\":1.5"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("window 1 of 1 weights: 1 1 1.5 1 1"), std::string::npos) << r.out;
  std::string long_prompt;
  for (int i = 0; i < 100; ++i) long_prompt += "cat ";
  r = ldm_run("tokenize \"" + long_prompt + "\" --vocab " + vocab());
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_NE(r.out.find("window 2 of 2 ids:"), std::string::npos) << r.out;
}

// fashion-eval's floor (real training images vs the test split) is drawn with
// its own seed: the same whether the classifier was just trained or loaded.
TEST(CliHygiene, FashionEvalFloorIsFixed) {
  if (!fs::exists("/usr/share/datasets/fashion-mnist")) GTEST_SKIP() << "dataset-fashion-mnist not installed";
  auto dir = test::temp_dir();
  for (int c = 0; c < 10; ++c) {
    fs::create_directories(dir + "/s/" + std::to_string(c));
    for (int i = 0; i < 3; ++i)
      io::save_png(dir + "/s/" + std::to_string(c) + "/" + std::to_string(i) + ".png", torch::rand({1, 28, 28}));
  }
  // bad paths are refused before the classifier trains (no classifier file written)
  auto bad = ldm_run("fashion-eval --samples " + dir + "/none --classifier " + dir + "/cls.safetensors");
  EXPECT_NE(bad.rc, 0);
  EXPECT_NE(bad.out.find(dir + "/none/0: missing"), std::string::npos) << bad.out;
  bad = ldm_run("fashion-eval --autoencoder " + dir + "/no_ae --classifier " + dir + "/cls.safetensors");
  EXPECT_NE(bad.out.find("--autoencoder " + dir + "/no_ae: not found"), std::string::npos) << bad.out;
  EXPECT_FALSE(fs::exists(dir + "/cls.safetensors"));
  auto floor_of = [&](const std::string& json) {
    auto r = ldm_run("fashion-eval --samples " + dir + "/s --epochs 1 --classifier " + dir + "/cls.safetensors --json " +
                     dir + "/" + json);
    EXPECT_EQ(r.rc, 0) << r.out;
    std::ifstream in(dir + "/" + json);
    std::string text((std::istreambuf_iterator<char>(in)), {});
    auto at = text.find("\"frechet_real_train\": ");
    return at == std::string::npos ? std::string("missing") : text.substr(at);
  };
  const auto trained = floor_of("a.json"), loaded = floor_of("b.json");
  EXPECT_EQ(trained, loaded);
  EXPECT_NE(trained, "missing");

  // --autoencoder: a (barely trained) first stage's reconstructions of the test split, measured alike
  auto r = test::run_command(std::string(LDM_BINARY) + " train " + LDM_SOURCE_DIR + "/configs/fashion/autoencoder.yaml -q -o " +
                             dir + "/ae --max-steps 2 training.image_every=0");
  ASSERT_EQ(r.rc, 0) << r.out;
  r = ldm_run("fashion-eval --samples " + dir + "/s --autoencoder " + dir + "/ae --classifier " + dir +
              "/cls.safetensors --grid " + dir + "/g.png --json " + dir + "/c.json");
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_NE(r.out.find("reconstructions (" + dir + "/ae): class accuracy"), std::string::npos) << r.out;
  auto j = nlohmann::json::parse(std::ifstream(dir + "/c.json"));
  for (const char* k : {"reconstruction_accuracy", "frechet_reconstruction", "frechet_real_train_10000", "reconstruction_l1",
                        "reconstruction_psnr", "sample_accuracy", "frechet_samples"})
    EXPECT_TRUE(j.contains(k)) << k;
  const double l1 = j["reconstruction_l1"], psnr = j["reconstruction_psnr"];
  EXPECT_GT(l1, 0);
  EXPECT_LE(l1, std::pow(10, -psnr / 20) + 1e-9);  // mean |d| <= sqrt(mean d^2) (Jensen)
  EXPECT_GT(j["frechet_reconstruction"].get<double>(), j["frechet_real_train_10000"].get<double>());
  auto grid = io::load_image(dir + "/g_compare.png", 1);
  EXPECT_EQ(grid.sizes(), (std::vector<int64_t>{1, 10 * 30 + 2, 12 * 30 + 2}));
}

// txt2img --prompts FILE under --nproc 2: each rank makes a contiguous block
// of the images with their global seeds and names, so the files equal one
// process's.
TEST(CliHygiene, SamplingSplitsAcrossRanks) {
  LDM_REQUIRE_SHARED();
  auto dir = test::temp_dir();
  std::ofstream(dir + "/prompts.txt") << "a red cube\n\na blue ball\r\na green cone\n";
  const std::string base = "txt2img --config " + test::fixture("tiny_sd_v1.yaml") + " -m " + test::fixture("tiny_sd_v1.ckpt") +
                           " --vocab " + vocab() + " --prompts " + dir + "/prompts.txt --steps 2";
  auto r = ldm_run(base + " -o " + dir + "/one.png");
  ASSERT_EQ(r.rc, 0) << r.out;
  r = ldm_run(base + " --nproc 2 -o " + dir + "/two.png");
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_NE(r.out.find("rank 1 of 2: images 1 to 2 of 3"), std::string::npos) << r.out;
  for (const std::string suffix : {"", "_1", "_2"}) {
    auto a = io::load_image(dir + "/one" + suffix + ".png"), b = io::load_image(dir + "/two" + suffix + ".png");
    const double err = (a - b).abs().max().item<double>();
    std::cout << "image" << suffix << ": max pixel difference 1 vs 2 ranks " << err * 255 << "/255\n";
    EXPECT_LE(err, 1.5 / 255) << suffix;
    EXPECT_EQ(io::read_png_text(dir + "/one" + suffix + ".png").at("parameters"),
              io::read_png_text(dir + "/two" + suffix + ".png").at("parameters"));
  }
  EXPECT_NE(io::read_png_text(dir + "/two_2.png").at("parameters").find("a green cone\n"), std::string::npos);
  EXPECT_NE(io::read_png_text(dir + "/two_2.png").at("parameters").find("Seed: 44,"), std::string::npos);
}

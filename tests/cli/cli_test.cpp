// End-to-end checks of the ldm binary: forward parity, info, convert, errors.
#include <cstdio>
#include <fstream>

#include "ldm/io/ckpt.h"
#include "ldm/io/image.h"
#include "tests/testing.h"

using namespace ldm;

namespace {
struct Result {
  int rc;
  std::string out;
};
Result run(const std::string& args) {
  std::string cmd = std::string(LDM_BINARY) + " " + args + " 2>&1";
  Result r{0, ""};
  FILE* p = popen(cmd.c_str(), "r");
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
  int st = pclose(p);
  r.rc = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return r;
}
std::string write_config(const std::string& dir, const std::string& fixture_file) {
  auto md = io::safetensors_metadata(test::fixture(fixture_file));
  std::string path = dir + "/" + fixture_file + ".yaml";
  std::ofstream(path) << md.at("config");
  return path;
}
void forward_parity(const std::string& file, const std::string& prefix) {
  auto dir = test::temp_dir();
  auto cfg = write_config(dir, file);
  auto fx = test::fixture(file);
  auto r = run("forward --config " + cfg + " --weights " + fx + " --weights-prefix " + prefix + " --inputs " + fx +
               " --inputs-prefix input. --out " + dir + "/o.safetensors");
  ASSERT_EQ(r.rc, 0) << r.out;
  auto got = io::load_safetensors(dir + "/o.safetensors");
  auto ref = io::load_safetensors(fx);
  auto md = io::safetensors_metadata(fx);
  double atol = std::stod(md.at("atol")), rtol = std::stod(md.at("rtol"));
  auto per = md.count("per_output_tolerance") ? nlohmann::json::parse(md.at("per_output_tolerance")) : nlohmann::json::object();
  int n = 0;
  for (auto& [k, v] : ref) {
    if (k.rfind("output.", 0) != 0 || k == "output.loss") continue;
    std::string name = k.substr(7);
    ASSERT_TRUE(got.count(name)) << name;
    double a = atol, rt = rtol;
    if (per.contains(name)) {
      a = per[name]["atol"].get<double>();
      rt = per[name]["rtol"].get<double>();
    }
    test::expect_close(got[name], v, a, rt, file + ":" + name);
    ++n;
  }
  EXPECT_GT(n, 0);
}
}  // namespace

TEST(Cli, ForwardUnetSd1) { LDM_REQUIRE_SHARED(); forward_parity("unet_sd1_tiny.safetensors", "model.diffusion_model."); }
TEST(Cli, ForwardUnetCin) { LDM_REQUIRE_SHARED(); forward_parity("unet_cin_tiny.safetensors", "model.diffusion_model."); }
TEST(Cli, ForwardVae) { LDM_REQUIRE_SHARED(); forward_parity("vae_kl_tiny.safetensors", "first_stage_model."); }

TEST(Cli, ForwardStrictLoadNamesKeys) {
  LDM_REQUIRE_SHARED();
  auto dir = test::temp_dir();
  auto cfg = write_config(dir, "unet_cin_tiny.safetensors");
  auto fx = test::fixture("unet_sd1_tiny.safetensors");  // wrong weights for this config
  auto r = run("forward --config " + cfg + " --weights " + fx + " --weights-prefix model.diffusion_model. --inputs " +
               fx + " --inputs-prefix input. --out " + dir + "/o.safetensors");
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.out.find("missing"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("input_blocks.3.0.in_layers.0.weight"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("shape mismatches: input_blocks.0.0.weight (file [32, 4, 3, 3], model [32, 3, 3, 3])"), std::string::npos);
  EXPECT_FALSE(std::filesystem::exists(dir + "/o.safetensors"));
}

TEST(Cli, InfoAndConvertEma) {
  LDM_REQUIRE_SHARED();
  auto dir = test::temp_dir();
  auto r = run("info " + test::fixture("tiny_sd_v1.ckpt"));
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_NE(r.out.find("global_step: 1234"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("model.diffusion_model"), std::string::npos);
  r = run("info " + test::shared_dir() + "/data/configs/sd-v1-inference.yaml");
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_NE(r.out.find("859520964"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("83653863"), std::string::npos) << r.out;

  r = run("convert " + test::fixture("tiny_sd_v1.ckpt") + " " + dir + "/ema.safetensors --ema --dtype fp16");
  ASSERT_EQ(r.rc, 0) << r.out;
  auto ema = io::load_safetensors(dir + "/ema.safetensors");
  auto orig = io::load_ckpt(test::fixture("tiny_sd_v1.ckpt")).tensors;
  auto k = "model.diffusion_model.input_blocks.0.0.weight";
  EXPECT_EQ(ema.at(k).scalar_type(), torch::kFloat16);
  EXPECT_TRUE(torch::equal(ema.at(k), (0.5 * orig.at(k)).to(torch::kFloat16)));
  EXPECT_EQ(ema.count("model_ema.decay"), 0u);
  EXPECT_TRUE(torch::equal(ema.at("first_stage_model.encoder.conv_in.weight"),
                           orig.at("first_stage_model.encoder.conv_in.weight").to(torch::kFloat16)));
  EXPECT_EQ(io::safetensors_metadata(dir + "/ema.safetensors").at("global_step"), "1234");
}

TEST(Cli, BadInputGivesOneLineError) {
  auto dir = test::temp_dir();
  std::ofstream(dir + "/junk.ckpt") << "not a checkpoint at all";
  auto r = run("info " + dir + "/junk.ckpt");
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.out.find("junk.ckpt"), std::string::npos) << r.out;
  EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1) << r.out;
  r = run("convert " + dir + "/missing.ckpt " + dir + "/x.safetensors");
  EXPECT_EQ(r.rc, 1);
  EXPECT_FALSE(std::filesystem::exists(dir + "/x.safetensors"));
  r = run("frobnicate");
  EXPECT_NE(r.rc, 0);
  // a missing peer is refused before any work runs
  for (const auto& [flag, want] : std::vector<std::pair<std::string, std::string>>{
           {"--sdcpp " + dir + "/no-sd-cli", "ldm: error: --sdcpp " + dir + "/no-sd-cli: not an executable file"},
           {"--peers-venv " + dir, "ldm: error: --peers-venv " + dir + ": no bin/python in it"},
           {"--ipex-venv " + dir, "ldm: error: --ipex-venv " + dir + ": no bin/python in it"},
           {"--reference " + dir + "/none", "ldm: error: --reference " + dir + "/none: not a directory"}}) {
    r = run("bench --only peak_gemm " + flag);
    EXPECT_EQ(r.rc, 1) << flag;
    EXPECT_NE(r.out.find(want), std::string::npos) << r.out;
    EXPECT_EQ(r.out.find("sgemm"), std::string::npos) << r.out;  // no work ran
  }
  // ranks that do not split a training config's batch, refused before any work runs
  r = run("bench --ranks 3 --only peak_gemm,train_fashion_ae --fashion-ae-config " + std::string(LDM_SOURCE_DIR) +
          "/configs/fashion/autoencoder.yaml");
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.out.find("--ranks 3: " + std::string(LDM_SOURCE_DIR) +
                       "/configs/fashion/autoencoder.yaml's batch of 8 does not split evenly"),
            std::string::npos) << r.out;
  EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1) << r.out;
}

// ldm bench prints each work's share of the peaks measured in the same run;
// the printed percentages are recomputed here from its JSON.
TEST(CliBench, FractionOfPeakFromTheSameRun) {
  auto dir = test::temp_dir();
  auto r = run("bench --runs 1 --only peak_gemm,peak_conv640,attn4096 --json " + dir + "/b.json");
  ASSERT_EQ(r.rc, 0) << r.out;
  std::ifstream f(dir + "/b.json");
  auto j = nlohmann::json::parse(f);
  const double attn = j["attn4096"]["gflops_per_s"].get<double>();
  for (const char* peak : {"peak_gemm", "peak_conv640"}) {
    const double p = j[peak]["gflops_per_s"].get<double>();
    ASSERT_GT(p, 0) << peak;
    char want[64];
    std::snprintf(want, sizeof want, "%5.1f%% of %s (%.1f GFLOP/s)", 100 * attn / p, peak, p);
    EXPECT_NE(r.out.find(want), std::string::npos) << want << "\n" << r.out;
  }
}

// ldm sample with the reference's noise and conditioning injected reproduces
// the reference DDIM/PLMS latents.
namespace {
void sample_parity(const std::string& file, const std::string& sampler) {
  LDM_REQUIRE_SHARED();
  auto dir = test::temp_dir();
  auto cfg = write_config(dir, file);
  auto fx = test::fixture(file);
  auto md = io::safetensors_metadata(fx);
  auto r = run("sample --config " + cfg + " --ckpt " + test::fixture(md.at("weights_file")) + " --sampler " + sampler +
               " --steps " + md.at("steps") + " --cfg-scale " + md.at("guidance_scale") + " --init-noise " + fx +
               ":input.x_T --cond " + fx + ":input.cond --uncond " + fx + ":input.uncond --save-latents " + dir +
               "/lat.safetensors -o " + dir);
  ASSERT_EQ(r.rc, 0) << r.out;
  auto got = io::load_safetensors(dir + "/lat.safetensors").at("latents");
  test::expect_close(got, io::load_safetensors(fx).at("output.x_final"), std::stod(md.at("atol")),
                     std::stod(md.at("rtol")), file + " via ldm sample");
}
}  // namespace
TEST(CliSample, DdimParityWithInjectedTensors) { sample_parity("sample_ddim_cfg.safetensors", "ddim"); }
TEST(CliSample, PlmsParityWithInjectedTensors) { sample_parity("sample_plms_cfg.safetensors", "plms"); }

TEST(CliSample, BadInputsAreOneLineErrors) {
  LDM_REQUIRE_SHARED();
  auto dir = test::temp_dir();
  auto cfg = write_config(dir, "sample_ddim_cfg.safetensors");
  auto fx = test::fixture("sample_ddim_cfg.safetensors");
  auto base = "sample --config " + cfg + " --ckpt " + test::fixture("unet_sd1_tiny.safetensors") + " -o " + dir;
  auto r = run(base + " --cond " + fx + ":nope");
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.out.find("no tensor named \"nope\""), std::string::npos) << r.out;
  r = run(base + " --cond " + fx + " --steps 3");
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.out.find("name one as FILE:name"), std::string::npos) << r.out;
  r = run(base + " --cond " + fx + ":input.cond --sampler lms");
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.out.find("unknown \"lms\""), std::string::npos) << r.out;
  r = run(base);  // conditional model without conditioning
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.out.find("give -p, --class or --cond"), std::string::npos) << r.out;
}

TEST(CliTokenize, PrintsTheReferenceIds) {
  LDM_REQUIRE_SHARED();
  auto vocab = test::shared_dir() + "/data/bpe_simple_vocab_16e6.txt.gz";
  auto ref = io::load_safetensors(test::fixture("clip_tokenizer.safetensors"));
  for (auto [pad, key] : {std::pair{"", "output.ids_hf"}, {" --pad zero", "output.ids_openai"}}) {
    auto r = run("tokenize \"a photograph of an astronaut riding a horse\" --vocab " + vocab + pad);
    ASSERT_EQ(r.rc, 0) << r.out;
    std::string want;
    auto row = ref.at(key)[0];
    for (int64_t i = 0; i < 77; ++i) want += (i ? " " : "") + std::to_string(row[i].item<int64_t>());
    EXPECT_EQ(r.out, want + "\n");
  }
  auto r = run("tokenize hi");
  EXPECT_NE(r.rc, 0);
}

// txt2img through ldm sample on the whole tiny SD checkpoint; the vocabulary
// is found beside the checkpoint or given with --vocab, and missing it is a
// clear error.
TEST(CliSample, PromptOnTinySD) {
  LDM_REQUIRE_SHARED();
  auto dir = test::temp_dir();
  auto base = "sample --config " + test::fixture("tiny_sd_v1.yaml") + " --ckpt " + test::fixture("tiny_sd_v1.ckpt") +
              " -p \"a red cube\" -n \"blurry\" --cfg-scale 5 --steps 4 --sampler dpm++2m --schedule karras -b 2 -o " + dir;
  auto r = run(base);
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.out.find("--vocab"), std::string::npos) << r.out;
  r = run(base + " --vocab " + test::shared_dir() + "/data/bpe_simple_vocab_16e6.txt.gz");
  ASSERT_EQ(r.rc, 0) << r.out;
  auto text = io::read_png_text(dir + "/000001.png");
  EXPECT_NE(text.at("parameters").find("a red cube\nNegative prompt: blurry\nSteps: 4, Sampler: DPM++ 2M"), std::string::npos)
      << text.at("parameters");
  auto grid = io::load_image(dir + "/grid.png");
  EXPECT_EQ(grid.size(1), 64 + 4);  // one row of 64 px images with 2 px padding
}

// stable-diffusion.cpp-style commands on the tiny SD checkpoint: -o is a file,
// img2img runs the last int(steps x strength) steps, inpaint takes a mask.
TEST(CliSample, Txt2ImgImg2ImgInpaint) {
  LDM_REQUIRE_SHARED();
  auto dir = test::temp_dir();
  auto base = " --config " + test::fixture("tiny_sd_v1.yaml") + " -m " + test::fixture("tiny_sd_v1.ckpt") +
              " -p \"a cat\" --vocab " + test::shared_dir() + "/data/bpe_simple_vocab_16e6.txt.gz";
  auto r = run("txt2img" + base + " --steps 4 -b 2 -o " + dir + "/t.png");
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_TRUE(std::filesystem::exists(dir + "/t_1.png"));
  r = run("img2img" + base + " --steps 8 --strength 0.5 --sampling-method euler -i " + dir + "/t.png -o " + dir + "/i.png");
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_NE(r.out.find(" 4 model evaluations"), std::string::npos) << r.out;  // the last 8 x 0.5 steps, cond + uncond batched
  auto mask = torch::zeros({1, 64, 64});
  mask.narrow(1, 0, 32).fill_(1);
  io::save_png(dir + "/m.png", mask);
  r = run("inpaint" + base + " --steps 4 -i " + dir + "/t.png --mask " + dir + "/m.png -o " + dir + "/p.png");
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_EQ(io::load_image(dir + "/p.png").sizes(), (std::vector<int64_t>{3, 64, 64}));

  // deterministic per seed, for all three; another seed gives another image
  auto pixels = [&](const std::string& f) { return io::load_image(dir + "/" + f); };
  const std::string again[] = {"txt2img" + base + " --steps 4 -b 2 -o " + dir + "/t2.png",
                               "img2img" + base + " --steps 8 --strength 0.5 --sampling-method euler -i " + dir +
                                   "/t.png -o " + dir + "/i2.png",
                               "inpaint" + base + " --steps 4 -i " + dir + "/t.png --mask " + dir + "/m.png -o " + dir +
                                   "/p2.png"};
  for (auto& cmd : again) ASSERT_EQ(run(cmd).rc, 0) << cmd;
  EXPECT_TRUE(torch::equal(pixels("t.png"), pixels("t2.png")));
  EXPECT_TRUE(torch::equal(pixels("t_1.png"), pixels("t2_1.png")));
  EXPECT_FALSE(torch::equal(pixels("t.png"), pixels("t_1.png")));  // batch items differ
  EXPECT_TRUE(torch::equal(pixels("i.png"), pixels("i2.png")));
  EXPECT_TRUE(torch::equal(pixels("p.png"), pixels("p2.png")));
  ASSERT_EQ(run("txt2img" + base + " --steps 4 --seed 43 -o " + dir + "/t3.png").rc, 0);
  EXPECT_FALSE(torch::equal(pixels("t.png"), pixels("t3.png")));
  auto init = pixels("t.png");

  // VAE tiling: same size, close to the plain decode
  ASSERT_EQ(run("txt2img" + base + " --steps 4 --vae-tiling --vae-tile-size 4 --vae-tile-overlap 2 -o " + dir + "/tt.png").rc, 0);
  auto tiled = pixels("tt.png");
  ASSERT_EQ(tiled.sizes(), init.sizes());
  EXPECT_LT((tiled - init).abs().mean().item<double>(), 0.1);

  // --precision bf16: weights converted on load, conv/matmul in bf16; the same image up to bf16 rounding
  ASSERT_EQ(run("txt2img" + base + " --steps 4 -b 2 --precision bf16 -o " + dir + "/b.png").rc, 0);
  const double bf16_err = (pixels("b.png") - init).abs().mean().item<double>();
  EXPECT_LT(bf16_err, 0.05) << bf16_err;

  // without --config the tiny model matches no Stable Diffusion family: a clear error
  r = run("txt2img -m " + test::fixture("tiny_sd_v1.ckpt") + " -p x -o " + dir + "/x.png");
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.out.find("give --config"), std::string::npos) << r.out;
}

// The CLI refuses bad request values with the library's one-line messages
// (pipeline/validate.cpp), before anything is allocated.
TEST(CliSample, BadRequestValuesAreTheLibrarysErrors) {
  LDM_REQUIRE_SHARED();
  auto dir = test::temp_dir();
  auto base = "txt2img --config " + test::fixture("tiny_sd_v1.yaml") + " -m " + test::fixture("tiny_sd_v1.ckpt") +
              " -p cat --steps 2 --vocab " + test::shared_dir() + "/data/bpe_simple_vocab_16e6.txt.gz -o " + dir + "/x.png";
  const std::pair<std::string, std::string> cases[] = {
      {" --cfg-scale nan", "cfg scale: expected a finite number, got nan"},
      {" --cfg-interval 3", "--cfg-interval: expected LO,HI in sigmas"},
      {" --cfg-interval 1,x", "--cfg-interval: expected LO,HI in sigmas"},
      {" --cfg-interval 4,2", "cfg interval: expected 0 <= low < high (sigmas; high may be inf), got 4, 2"},
      {" --cfg-rescale -0.5", "cfg rescale: expected 0 <= phi <= 1, got -0.5"},
      {" -W -64", "width: expected a positive number of pixels, got -64"},
      {" -W 100 -H 80", "width: must be a multiple of 16 (the first stage's 4 x the UNet's 4), got 100"},
      {" -b 0", "batch: expected at least 1 image, got 0"},
      {" -b -1", "batch: expected at least 1 image, got -1"},
      {" -b 100000", "request too large"},
      {" -W 65536", "width: at most 8192 pixels, got 65536"},
  };
  for (const auto& [flags, want] : cases) {
    auto r = run(base + flags);
    EXPECT_EQ(r.rc, 1) << flags << ": " << r.out;
    EXPECT_NE(r.out.find("ldm: error: " + want), std::string::npos) << flags << ": " << r.out;
    EXPECT_FALSE(std::filesystem::exists(dir + "/x.png")) << flags;
  }
}

// TAESD against taesd.py's outputs (the fixture), from its .pth and
// .safetensors files and from diffusers' AutoencoderTiny layout; and as the
// pipeline's decoder and preview.
#include "ldm/error.h"
#include "ldm/io/ckpt.h"
#include "ldm/io/safetensors.h"
#include "ldm/modules/taesd.h"
#include "ldm/pipeline/pipeline.h"
#include "tests/testing.h"
#include "tests/tiny_sd.h"

using namespace ldm;

namespace {
void check(TaesdNet& net, const std::string& in, const std::string& out, const std::string& what) {
  auto io_ = io::load_safetensors(test::fixture("taesd_io.safetensors"));
  auto md = io::safetensors_metadata(test::fixture("taesd_io.safetensors"));
  torch::NoGradGuard ng;
  test::expect_close(net.forward(io_.at(in)), io_.at(out), std::stod(md.at("atol")), std::stod(md.at("rtol")), what);
}
}  // namespace

TEST(Taesd, DecoderAndEncoderMatchTaesdPy) {
  LDM_REQUIRE_SHARED();
  for (const char* f : {"taesd_decoder.pth", "taesd_decoder.safetensors"})
    check(*load_taesd(test::fixture(f), true), "input.latents", "output.decoded", f);
  check(*load_taesd(test::fixture("taesd_encoder.safetensors"), false), "input.image", "output.latents", "encoder");
}

TEST(Taesd, DiffusersAutoencoderTinyLayout) {
  LDM_REQUIRE_SHARED();
  // both parts in one file, decoder indices one less (no Clamp module)
  io::TensorMap both;
  for (auto& [k, t] : io::load_weights(test::fixture("taesd_decoder.safetensors")).tensors) {
    auto dot = k.find('.');
    both["decoder.layers." + std::to_string(std::stoll(k.substr(0, dot)) - 1) + k.substr(dot)] = t;
  }
  for (auto& [k, t] : io::load_weights(test::fixture("taesd_encoder.safetensors")).tensors) both["encoder.layers." + k] = t;
  auto dir = test::temp_dir();
  io::save_safetensors(dir + "/tiny.safetensors", both);
  check(*load_taesd(dir + "/tiny.safetensors", true), "input.latents", "output.decoded", "AutoencoderTiny decoder");
  check(*load_taesd(dir + "/tiny.safetensors", false), "input.image", "output.latents", "AutoencoderTiny encoder");
  // an encoder file is not a decoder: a clear error naming the file
  try {
    load_taesd(test::fixture("taesd_encoder.safetensors"), true);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("taesd_encoder.safetensors"), std::string::npos) << e.what();
  }
}

TEST(Taesd, PipelineDecodesWithItAndPreviews) {
  LDM_REQUIRE_SHARED();
  auto o = test::tiny_sd_options();
  o.taesd = test::fixture("taesd_decoder.safetensors");
  auto p = pipeline::Pipeline::load(o);
  pipeline::GenerateRequest r;
  r.prompt = "a cat";
  r.steps = 2;
  std::vector<torch::Tensor> previews;
  pipeline::GenerateCallbacks cb;
  cb.progress = [&](const pipeline::ProgressInfo& i) { previews.push_back(p->preview(i.denoised)); };
  auto res = p->generate(r, cb);
  // the images are TAESD's decode of the final latents, clamped to [0, 1]
  auto dec = load_taesd(o.taesd, true);
  torch::NoGradGuard ng;
  EXPECT_TRUE(torch::allclose(res.images, dec->forward(res.latents).clamp(0, 1), 1e-6, 1e-6));
  ASSERT_EQ(previews.size(), 2u);
  EXPECT_EQ(previews[0].sizes(), (std::vector<int64_t>{1, 3, 128, 128}));  // TAESD upsamples 8x (the tiny VAE 4x)
  auto proj = p->preview(res.latents, "proj");
  EXPECT_EQ(proj.sizes(), (std::vector<int64_t>{1, 3, 64, 64}));
  EXPECT_GE(proj.min().item<double>(), 0.0);
  EXPECT_LE(proj.max().item<double>(), 1.0);
}

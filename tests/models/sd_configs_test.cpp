// Built-in Stable Diffusion configs, their detection from checkpoint tensors,
// and tiled first-stage passes.
#include <yaml-cpp/yaml.h>

#include "ldm/error.h"
#include "ldm/models/diffusion/load.h"
#include "ldm/models/diffusion/sd_configs.h"
#include "ldm/models/tiling.h"
#include "ldm/models/registry.h"
#include "tests/testing.h"

using namespace ldm;

namespace {
using Map = std::map<std::string, torch::Tensor>;
// the tensors detection looks at, with SD's real shapes (no data)
Map sd_like(int64_t in_ch, int64_t ctx, bool openclip) {
  Map w;
  w["model.diffusion_model.input_blocks.0.0.weight"] = torch::empty({320, in_ch, 3, 3});
  w["model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"] = torch::empty({320, ctx});
  if (openclip) w["cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"] = torch::empty({3, 1});
  else w["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"] = torch::empty({1, 1});
  return w;
}
int64_t params_under(const YAML::Node& model, const std::string& key) {
  return count_parameters(model["params"][key], key);
}
}  // namespace

TEST(SdConfigs, DetectsFamilies) {
  EXPECT_EQ(detect_sd_config(sd_like(4, 768, false), "v1-5-pruned.safetensors").name, "v1-inference.yaml");
  EXPECT_EQ(detect_sd_config(sd_like(9, 768, false), "sd-v1-5-inpainting.ckpt").name, "v1-inpainting-inference.yaml");
  EXPECT_EQ(detect_sd_config(sd_like(9, 1024, true), "512-inpainting-ema.ckpt").name, "v2-inpainting-inference.yaml");
  // 2.x eps and v files have the same tensors: name, then --prediction decide
  EXPECT_EQ(detect_sd_config(sd_like(4, 1024, true), "v2-1_768-ema-pruned.safetensors").name, "v2-inference-v.yaml");
  EXPECT_EQ(detect_sd_config(sd_like(4, 1024, true), "v2-1_512-ema-pruned.safetensors").name, "v2-inference.yaml");
  EXPECT_EQ(detect_sd_config(sd_like(4, 1024, true), "512-base-ema.ckpt", "v").name, "v2-inference-v.yaml");
  EXPECT_EQ(detect_sd_config(sd_like(4, 1024, true), "model.ckpt", "eps").name, "v2-inference.yaml");
}

TEST(SdConfigs, UnknownTensorsAreAClearError) {
  auto tiny = sd_like(4, 768, false);
  tiny["model.diffusion_model.input_blocks.0.0.weight"] = torch::empty({32, 4, 3, 3});
  try {
    detect_sd_config(tiny, "tiny.ckpt");
    FAIL() << "no error";
  } catch (const Error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("tiny.ckpt"), std::string::npos) << m;
    EXPECT_NE(m.find("[32, 4, 3, 3]"), std::string::npos) << m;
    EXPECT_NE(m.find("--config"), std::string::npos) << m;
  }
  EXPECT_THROW(detect_sd_config(Map{}, "empty.safetensors"), Error);
  auto mixed = sd_like(4, 1024, false);  // SD 2 width with an SD 1 text encoder
  EXPECT_THROW(detect_sd_config(mixed, "mixed.ckpt"), Error);
  EXPECT_THROW(builtin_config("v3-inference.yaml"), Error);
}

// Each built-in config builds the published architecture: parameter counts of
// the released checkpoints (UNet, VAE, text encoder).
TEST(SdConfigs, BuiltinsHaveTheReleasedParameterCounts) {
  struct Want {
    const char* name;
    int64_t unet, cond;
  };
  for (auto w : {Want{"v1-inference.yaml", 859520964, 123060480}, Want{"v1-inpainting-inference.yaml", 859535364, 123060480},
                 Want{"v2-inference.yaml", 865910724, -1}, Want{"v2-inference-v.yaml", 865910724, -1},
                 Want{"v2-inpainting-inference.yaml", 865925124, -1}}) {
    auto model = YAML::Load(builtin_config(w.name))["model"];
    EXPECT_EQ(params_under(model, "unet_config"), w.unet) << w.name;
    EXPECT_EQ(params_under(model, "first_stage_config"), 83653863) << w.name;
    if (w.cond > 0) EXPECT_EQ(params_under(model, "cond_stage_config"), w.cond) << w.name;
    nn::InitScope meta(nn::Init::Meta);
    EXPECT_NO_THROW(instantiate_from_config(model, w.name)) << w.name;
  }
}

// Tiling is exact for maps whose output pixel depends on its own input pixel
// only (any blend of equal values is that value), including the encoder's
// aligned downsampling, and is the plain call when one tile covers the input.
TEST(Tiling, ExactForLocalMaps) {
  auto x = torch::randn({2, 4, 37, 50});
  auto up = [](const torch::Tensor& t) {
    return torch::nn::functional::interpolate(
               t, torch::nn::functional::InterpolateFuncOptions().scale_factor(std::vector<double>{8, 8}).mode(torch::kNearest))
               .tanh();
  };
  auto ref = up(x);
  for (auto o : {TileOptions{16, 4, 1}, TileOptions{8, 0, 1}, TileOptions{20, 19, 1}, TileOptions{64, 8, 1}}) {
    auto got = tiled_apply(up, x, o);
    ASSERT_EQ(got.sizes(), ref.sizes());
    EXPECT_LT(test::max_abs_err(got, ref), 1e-5) << o.tile << "/" << o.overlap;
  }
  auto img = torch::randn({1, 3, 96, 136});
  auto down = [](const torch::Tensor& t) { return torch::avg_pool2d(t, 8); };
  auto got = tiled_apply(down, img, TileOptions{32, 8, 8});
  EXPECT_LT(test::max_abs_err(got, down(img)), 1e-6);
  EXPECT_THROW(tiled_apply(down, img, TileOptions{32, 32, 8}), Error);
  EXPECT_THROW(tiled_apply(down, img, TileOptions{30, 8, 8}), Error);
}

// A real decoder (tiny SD's VAE): tiles of half the latent with overlap give
// the same image up to the receptive-field seams, far below the image's scale.
TEST(Tiling, TinySdDecoderMatchesUntiled) {
  LDM_REQUIRE_SHARED();
  auto m = load_latent_diffusion(test::fixture("tiny_sd_v1.yaml"), test::fixture("tiny_sd_v1.ckpt"), {true});
  torch::NoGradGuard ng;
  torch::manual_seed(0);
  auto z = torch::randn({1, 4, 24, 24});
  auto ref = m->decode_first_stage(z);
  m->vae_tiling = {12, 4, 1};
  auto got = m->decode_first_stage(z);
  ASSERT_EQ(got.sizes(), ref.sizes());
  const double err = (got - ref).abs().mean().item<double>(), scale = ref.std().item<double>();
  EXPECT_LT(err, 0.1 * scale) << err << " vs std " << scale;
  EXPECT_GT(err, 0.0);  // it did tile
  m->vae_tiling = {24, 4, 1};  // one tile: the plain call (up to the kernel change: a layer
  // switches to Winograd after its second call, ~1e-6 of the range apart)
  EXPECT_LT(test::max_abs_err(m->decode_first_stage(z), ref), 1e-5 * ref.abs().max().item<double>());
}

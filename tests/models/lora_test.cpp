// LoRA: the formats' deltas against independent formulas, name resolution
// (diffusers and LDM UNet names, text encoders, 9-channel conv_in), the
// kohya fixture baked by `ldm convert`, and per-request merging that
// restores the base model exactly.
#include <cstdio>
#include <set>

#include "ldm/error.h"
#include "ldm/io/ckpt.h"
#include "ldm/io/image.h"
#include "ldm/io/safetensors.h"
#include "ldm/models/lora.h"
#include "ldm/pipeline/pipeline.h"
#include "tests/testing.h"
#include "tests/tiny_sd.h"

using namespace ldm;

namespace {
using Shapes = std::map<std::string, std::vector<int64_t>>;
const std::string U = "model.diffusion_model.";

Shapes tiny_unet_shapes() {
  return {{U + "input_blocks.0.0.weight", {32, 9, 3, 3}},
          {U + "input_blocks.3.0.op.weight", {32, 32, 3, 3}},
          {U + "input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight", {64, 64}},
          {U + "input_blocks.4.1.proj_in.weight", {64, 64, 1, 1}},
          {U + "input_blocks.1.0.in_layers.2.weight", {32, 32, 3, 3}},
          {U + "output_blocks.2.1.conv.weight", {64, 64, 3, 3}},
          {"cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight", {64, 64}},
          {"cond_stage_model.model.transformer.resblocks.1.attn.in_proj_weight", {192, 64}}};
}

int run(const std::string& cmd, std::string* out = nullptr) {
  auto r = test::run_command(cmd);
  if (out) *out = r.out;
  return r.rc;
}
}  // namespace

TEST(Lora, FormatsGiveTheirDefinedDeltas) {
  torch::manual_seed(0);
  auto shapes = tiny_unet_shapes();
  auto up = torch::randn({64, 4}), down = torch::randn({4, 64});
  auto w1a = torch::randn({64, 2}), w1b = torch::randn({2, 64}), w2a = torch::randn({64, 2}), w2b = torch::randn({2, 64});
  auto k1 = torch::randn({8, 8}), k2a = torch::randn({8, 2}), k2b = torch::randn({2, 8});
  std::map<std::string, torch::Tensor> f = {
      // kohya, diffusers-style name, alpha 2 of rank 4
      {"lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight", up},
      {"lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight", down},
      {"lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q.alpha", torch::tensor(2.0)},
      // LoHa on the 1x1 proj_in (LDM-style name), no alpha: alpha = rank
      {"lora_unet_input_blocks_4_1_proj_in.hada_w1_a", w1a}, {"lora_unet_input_blocks_4_1_proj_in.hada_w1_b", w1b},
      {"lora_unet_input_blocks_4_1_proj_in.hada_w2_a", w2a}, {"lora_unet_input_blocks_4_1_proj_in.hada_w2_b", w2b},
      // LoKr on the text encoder's q_proj
      {"lora_te_text_model_encoder_layers_0_self_attn_q_proj.lokr_w1", k1},
      {"lora_te_text_model_encoder_layers_0_self_attn_q_proj.lokr_w2_a", k2a},
      {"lora_te_text_model_encoder_layers_0_self_attn_q_proj.lokr_w2_b", k2b},
      // PEFT names, and one module no weight has
      {"unet.up_blocks.0.upsamplers.0.conv.lora_A.weight", torch::randn({2, 64, 3, 3})},
      {"unet.up_blocks.0.upsamplers.0.conv.lora_B.weight", torch::randn({64, 2, 1, 1})},
      {"lora_unet_nowhere_proj.lora_up.weight", up}, {"lora_unet_nowhere_proj.lora_down.weight", down}};
  auto m = match_lora(f, shapes, "test.safetensors");
  ASSERT_EQ(m.deltas.size(), 4u);
  EXPECT_EQ(m.unmatched, std::vector<std::string>{"lora_unet_nowhere_proj"});
  std::map<std::string, LoraDelta> by;
  for (auto& d : m.deltas) by[d.key] = d;
  auto q = by.at(U + "input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight");
  EXPECT_TRUE(torch::allclose(q.delta, up.mm(down) * 0.5, 1e-5, 1e-5));
  auto p = by.at(U + "input_blocks.4.1.proj_in.weight");
  EXPECT_TRUE(torch::allclose(p.delta, (w1a.mm(w1b) * w2a.mm(w2b)).reshape({64, 64, 1, 1}), 1e-5, 1e-5));
  auto t = by.at("cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight");
  EXPECT_TRUE(t.text);
  EXPECT_TRUE(torch::allclose(t.delta, torch::kron(k1, k2a.mm(k2b)), 1e-5, 1e-5));  // alpha = rank: scale 1
  EXPECT_TRUE(by.count(U + "output_blocks.2.1.conv.weight"));  // level without attention: upsampler at .1
  // applying twice the multiplier doubles the change; the rest of the weight is untouched
  auto w = torch::zeros({64, 64});
  add_lora_delta(w, q, 2.0);
  EXPECT_TRUE(torch::allclose(w, q.delta * 2, 1e-6, 1e-6));
}

TEST(Lora, NineChannelConvInAndOpenClipSlices) {
  torch::manual_seed(1);
  auto shapes = tiny_unet_shapes();
  std::map<std::string, torch::Tensor> f = {
      {"lora_unet_conv_in.lora_down.weight", torch::randn({2, 4, 3, 3})},
      {"lora_unet_conv_in.lora_up.weight", torch::randn({32, 2, 1, 1})},
      {"lora_te_text_model_encoder_layers_1_self_attn_k_proj.lora_down.weight", torch::randn({2, 64})},
      {"lora_te_text_model_encoder_layers_1_self_attn_k_proj.lora_up.weight", torch::randn({64, 2})}};
  auto m = match_lora(f, shapes, "x");
  ASSERT_EQ(m.deltas.size(), 2u);
  for (auto& d : m.deltas) {
    if (d.key == U + "input_blocks.0.0.weight") {
      EXPECT_EQ(d.in_channels, 4);
      auto w = torch::zeros({32, 9, 3, 3});
      add_lora_delta(w, d, 1.0);
      EXPECT_GT(w.narrow(1, 0, 4).abs().sum().item<double>(), 0);
      EXPECT_EQ(w.narrow(1, 4, 5).abs().sum().item<double>(), 0);  // mask and masked-image channels unchanged
    } else {
      EXPECT_EQ(d.key, "cond_stage_model.model.transformer.resblocks.1.attn.in_proj_weight");
      auto w = torch::zeros({192, 64});
      add_lora_delta(w, d, 1.0);
      EXPECT_EQ(w.narrow(0, 0, 64).abs().sum().item<double>(), 0);
      EXPECT_GT(w.narrow(0, 64, 64).abs().sum().item<double>(), 0);  // k: the middle third
      EXPECT_EQ(w.narrow(0, 128, 64).abs().sum().item<double>(), 0);
    }
  }
  std::map<std::string, torch::Tensor> none = {{"lora_unet_foo.lora_up.weight", torch::ones({2, 2})},
                                               {"lora_unet_foo.lora_down.weight", torch::ones({2, 2})}};
  try {
    match_lora(none, shapes, "/x/none.safetensors");
    FAIL() << "a file that matches nothing must be an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("/x/none.safetensors: matches no weight"), std::string::npos) << e.what();
  }
}

// The acceptance of the fixture: convert bakes it within tolerance, other
// weights unchanged; a prompt tag gives the merged checkpoint's pixels.
TEST(Lora, KohyaFixtureBakedAndUsedFromAPrompt) {
  LDM_REQUIRE_SHARED();
  auto dir = test::temp_dir();
  const std::string base = test::fixture("tiny_sd_v1.ckpt");
  std::string out;
  ASSERT_EQ(run(std::string(LDM_BINARY) + " convert " + base + " " + dir + "/merged.safetensors --lora " +
                    test::fixture("lora_tiny_kohya.safetensors") + ":0.8",
                &out),
            0)
      << out;
  auto merged = io::load_safetensors(dir + "/merged.safetensors");
  auto orig = io::load_weights(base).tensors;
  auto expected = io::load_safetensors(test::fixture("lora_tiny_expected.safetensors"));
  auto md = io::safetensors_metadata(test::fixture("lora_tiny_expected.safetensors"));
  const double atol = std::stod(md.at("atol")), rtol = std::stod(md.at("rtol"));
  std::set<std::string> listed;
  for (auto& [k, v] : expected) {
    if (k.rfind("output.", 0) != 0) continue;
    listed.insert(k.substr(7));
    test::expect_close(merged.at(k.substr(7)), v, atol, rtol, k);
  }
  EXPECT_EQ(listed.size(), 182u);
  for (auto& [k, v] : orig)
    if (!listed.count(k) && k.rfind("model_ema.", 0) != 0) EXPECT_TRUE(torch::equal(merged.at(k), v)) << k;

  const std::string common = " --config " + test::fixture("tiny_sd_v1.yaml") + " --vocab " + test::shared_dir() +
                             "/data/bpe_simple_vocab_16e6.txt.gz --steps 3";
  ASSERT_EQ(run(std::string(LDM_BINARY) + " txt2img -m " + dir + "/merged.safetensors -p \"a cat\"" + common + " -o " +
                    dir + "/merged.png", &out), 0) << out;
  ASSERT_EQ(run(std::string(LDM_BINARY) + " txt2img -m " + base + " -p \"a cat <lora:lora_tiny_kohya:0.8>\"" + common +
                    " --lora-model-dir " + test::shared_dir() + "/fixtures -o " + dir + "/tag.png", &out), 0) << out;
  ASSERT_EQ(run(std::string(LDM_BINARY) + " txt2img -m " + base + " -p \"a cat\"" + common + " -o " + dir + "/base.png",
                &out), 0) << out;
  auto px = [&](const std::string& f) { return io::load_image(dir + "/" + f); };
  EXPECT_TRUE(torch::equal(px("tag.png"), px("merged.png")));
  EXPECT_FALSE(torch::equal(px("tag.png"), px("base.png")));
  EXPECT_NE(io::read_png_text(dir + "/tag.png").at("parameters").find("Lora: lora_tiny_kohya:0.8"), std::string::npos);
  // names never leave the directory
  EXPECT_NE(run(std::string(LDM_BINARY) + " txt2img -m " + base + " -p \"<lora:../x:1>\"" + common +
                    " --lora-model-dir " + dir + " -o " + dir + "/bad.png", &out), 0);
  EXPECT_NE(out.find("<lora:../x>: expected a file name without directories"), std::string::npos) << out;
}

TEST(Lora, PipelineRestoresTheBaseModelExactly) {
  LDM_REQUIRE_SHARED();
  auto o = test::tiny_sd_options();
  o.lora_dir = test::shared_dir() + "/fixtures";
  auto p = pipeline::Pipeline::load(o);
  pipeline::GenerateRequest r;
  r.prompt = "a cat";
  r.steps = 3;
  auto before = p->generate(r).images_u8;
  r.prompt = "a cat <lora:lora_tiny_kohya:0.5:1.2>";  // A1111's te and unet multipliers
  auto with = p->generate(r);
  EXPECT_FALSE(torch::equal(with.images_u8, before));
  EXPECT_NE(with.parameters.find("Lora: lora_tiny_kohya:1.2:te 0.5"), std::string::npos) << with.parameters;
  r.prompt = "a cat";
  EXPECT_TRUE(torch::equal(p->generate(r).images_u8, before));
  r.loras = {{test::fixture("lora_tiny_kohya.safetensors"), 0.5, 1.2}};
  EXPECT_TRUE(torch::equal(p->generate(r).images_u8, with.images_u8));  // the same LoRA given as a file
}

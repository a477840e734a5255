// LoRA training (a `lora:` section): only the adapters get gradients, the
// loss falls, the kohya file it writes reloads through our own loader with
// every module matched, and changes the images.
#include <filesystem>
#include <fstream>

#include "ldm/io/ckpt.h"
#include "ldm/io/image.h"
#include "ldm/io/safetensors.h"
#include "ldm/data/registry.h"
#include "ldm/models/lora.h"
#include "ldm/train/task.h"
#include "ldm/train/trainer.h"
#include "ldm/util/config.h"
#include "tests/testing.h"
#include "tests/tiny_sd.h"

using namespace ldm;
namespace fs = std::filesystem;

namespace {
// tiny_sd_v1's config plus a caption folder of flat-coloured squares, and a lora section.
YAML::Node lora_config(const std::string& dir, const std::string& targets) {
  fs::create_directories(dir + "/data");
  for (int i = 0; i < 4; ++i) {
    auto img = torch::zeros({3, 64, 64});
    img[i % 3].fill_(1.0);
    io::save_png(dir + "/data/" + std::to_string(i) + ".png", img);
    std::ofstream(dir + "/data/" + std::to_string(i) + ".txt") << (i % 3 == 0 ? "a red square" : "a green square");
  }
  auto y = load_yaml(test::fixture("tiny_sd_v1.yaml"));
  const std::string extra = "data:\n  target: main.DataModuleFromConfig\n  params:\n    batch_size: 4\n    num_workers: 1\n"
                            "    train:\n      target: ldm.data.image_folder.ImageFolder\n      params: {root: " + dir +
                            "/data}\n"
                            "lightning:\n  trainer: {max_steps: 40}\n"
                            "training: {seed: 3, log_every: 1, checkpoint_every: 20, scale_lr: false, vocab: " +
                            test::clip_vocab() + "}\n"
                            "lora: {rank: 4, alpha: 2, targets: " + targets + ", base: " + test::fixture("tiny_sd_v1.ckpt") + "}\n";
  auto e = parse_yaml(extra, "test");
  for (auto kv : e) y[kv.first.as<std::string>()] = kv.second;
  apply_overrides(y, {"model.base_learning_rate=3e-3", "model.params.cond_stage_key=txt"});
  return y;
}
}  // namespace

TEST(LoraTrain, GradientsReachOnlyTheAdapters) {
  LDM_REQUIRE_SHARED();
  auto y = lora_config(test::temp_dir(), "all");
  Settings s = read_settings(y);
  auto task = make_task(y, 1e-3, s);
  task->prepare(*make_dataset(y["data"]["params"]["train"], "train").ds, TransformOptions{}, s);
  Batch b;
  b.image = torch::rand({2, 3, 64, 64}) * 2 - 1;
  b.caption = {"a red square", "a green square"};
  b.index = torch::arange(2);
  b.label = torch::zeros({2}, torch::kInt64);
  auto g = torch::make_generator<at::CPUGeneratorImpl>(0);
  task->loss(b, 0, 0, g).loss.backward();
  const auto lora_params = task->params(0);
  ASSERT_GT(lora_params.size(), 100u);  // every Linear and Conv of the UNet (LoCon)
  int with_grad = 0;
  for (auto& p : lora_params) with_grad += p.grad().defined();
  EXPECT_EQ(with_grad, static_cast<int>(lora_params.size()));
  // the base model (reached through the diffusion task's checkpoint, an EMA-free model) has none
  for (auto& item : task->module().named_parameters()) EXPECT_TRUE(item.key().rfind("lora_unet_", 0) == 0) << item.key();
}

TEST(LoraTrain, LowersTheLossAndItsFileChangesTheImages) {
  LDM_REQUIRE_SHARED();
  auto dir = test::temp_dir();
  auto y = lora_config(dir, "attention+ff");
  TrainOptions o;
  o.out_dir = dir + "/run";
  o.quiet = true;
  auto r = train(y, o);
  ASSERT_EQ(r.steps, 40);
  auto mean = [&](int from, int to) {
    double m = 0;
    for (int i = from; i < to; ++i) m += r.losses[i];
    return m / (to - from);
  };
  EXPECT_LT(mean(30, 40), 0.9 * mean(0, 10)) << "first " << mean(0, 10) << " last " << mean(30, 40);
  // kohya's format, read back by our loader with every module matched
  const std::string file = dir + "/run/lora.safetensors";
  ASSERT_TRUE(fs::exists(file));
  auto md = io::safetensors_metadata(file);
  EXPECT_EQ(md.at("ss_network_dim"), "4");
  EXPECT_EQ(md.at("ss_steps"), "40");
  auto t = io::load_safetensors(file);
  EXPECT_TRUE(t.count("lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight"));
  EXPECT_TRUE(t.count("lora_unet_up_blocks_1_attentions_2_transformer_blocks_0_ff_net_2.alpha"));
  std::map<std::string, std::vector<int64_t>> shapes;
  for (auto& [k, v] : io::load_weights(test::fixture("tiny_sd_v1.ckpt")).tensors) shapes[k] = v.sizes().vec();
  auto m = match_lora(t, shapes, file);
  EXPECT_TRUE(m.unmatched.empty()) << m.unmatched.front();
  EXPECT_EQ(m.deltas.size() * 3, t.size());
  // the checkpoints hold only the adapters (a few hundred KB, not the base)
  EXPECT_LT(fs::file_size(dir + "/run/checkpoints/step-000000040/model.safetensors"), 2u << 20);
  // used at inference: different pixels from the base model's
  auto p = pipeline::Pipeline::load(test::tiny_sd_options());
  pipeline::GenerateRequest req;
  req.prompt = "a red square";
  req.steps = 3;
  auto base = p->generate(req).images_u8;
  req.loras = {{file, 1.0, 1.0}};
  EXPECT_FALSE(torch::equal(p->generate(req).images_u8, base));
}

// lora.text_encoder: adapters on CLIP's attention train too and are exported
// under kohya's lora_te_ names; lora.ema_decay: lora.safetensors holds LitEma's
// average of the adapters, checked against the average recomputed from every
// step's checkpoint (up starts at zero, so its average is known from the steps).
TEST(LoraTrain, TextEncoderAdaptersAndTheirEma) {
  LDM_REQUIRE_SHARED();
  auto dir = test::temp_dir();
  auto y = lora_config(dir, "attention");
  apply_overrides(y, {"lora.text_encoder=true", "lora.ema_decay=0.9", "lightning.trainer.max_steps=6",
                      "training.checkpoint_every=1", "training.keep_checkpoints=10"});
  TrainOptions o;
  o.out_dir = dir + "/run";
  o.quiet = true;
  ASSERT_EQ(train(y, o).steps, 6);
  const std::string file = dir + "/run/lora.safetensors";
  auto t = io::load_safetensors(file);
  EXPECT_EQ(io::safetensors_metadata(file).at("ss_text_encoder"), "trained");
  const std::string te = "lora_te_text_model_encoder_layers_0_self_attn_q_proj";
  ASSERT_TRUE(t.count(te + ".lora_up.weight"));
  EXPECT_GT(t.at(te + ".lora_up.weight").abs().max().item<double>(), 0) << "the text encoder's adapter trained";
  EXPECT_FALSE(t.count("lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight"));  // targets: attention
  std::map<std::string, std::vector<int64_t>> shapes;
  for (auto& [k, v] : io::load_weights(test::fixture("tiny_sd_v1.ckpt")).tensors) shapes[k] = v.sizes().vec();
  auto m = match_lora(t, shapes, file);
  EXPECT_TRUE(m.unmatched.empty()) << m.unmatched.front();
  bool te_delta = false;
  for (auto& d : m.deltas) te_delta = te_delta || d.key.rfind("cond_stage_model.", 0) == 0;
  EXPECT_TRUE(te_delta);
  // EMA: e_k = d_k e_{k-1} + (1 - d_k) w_k with d_k = min(0.9, (1 + k) / (10 + k)) (LitEma), e_0 = w_0 = 0 for `up`
  for (const std::string name : {te, std::string("lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k")}) {
    torch::Tensor e;
    for (int k = 1; k <= 6; ++k) {
      char step[32];
      std::snprintf(step, sizeof step, "step-%09d", k);
      auto w = io::load_safetensors(dir + "/run/checkpoints/" + step + "/model.safetensors").at(name + ".up");
      if (!e.defined()) e = torch::zeros_like(w);
      const double d = std::min(0.9, (1.0 + k) / (10.0 + k));
      e = d * e + (1 - d) * w;
    }
    auto got = t.at(name + ".lora_up.weight");
    EXPECT_TRUE(torch::allclose(got, e, 1e-5, 1e-7)) << name << ": " << (got - e).abs().max().item<double>();
    auto raw = io::load_safetensors(dir + "/run/checkpoints/step-000000006/model.safetensors").at(name + ".up");
    EXPECT_FALSE(torch::allclose(got, raw)) << name << ": the file holds the average, not the last step";
  }
}

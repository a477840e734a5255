// The training pipeline end to end on tiny models: autoencoder (with the GAN
// term switched on), latent diffusion on its latents, resume equality, the
// NaN/Inf guard, corrupt images, and checkpoints surviving SIGKILL.
#include "ldm/train/trainer.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "ldm/data/dataset.h"
#include "ldm/error.h"
#include "ldm/io/image.h"
#include "ldm/models/diffusion/load.h"
#include "ldm/modules/encoders/clip_text.h"
#include "ldm/modules/losses/lpips.h"
#include "ldm/io/safetensors.h"
#include "ldm/models/diffusion/samplers/sampler.h"
#include "ldm/train/checkpoint.h"
#include "ldm/train/metrics.h"
#include "ldm/util/config.h"
#include "ldm/models/registry.h"
#include "ldm/io/ckpt.h"
#include "ldm/io/run_dir.h"
#include "ldm/io/state_dict.h"
#include "ldm/modules/ema.h"
#include "tests/testing.h"
#include "tests/train/train_helpers.h"

using namespace ldm;
using namespace ldm::train_test;
namespace fs = std::filesystem;

TEST(Trainer, AutoencoderThenLatentDiffusionEndToEnd) {
  auto dir = test::temp_dir();
  auto folder = make_folder(dir + "/data");
  auto ae = train(parse_yaml(ae_config(folder), "ae"), quiet(dir + "/ae"));
  EXPECT_EQ(ae.steps, 4);
  ASSERT_TRUE(fs::exists(dir + "/ae/checkpoints/latest"));
  EXPECT_TRUE(fs::exists(dir + "/ae/images/step-000000004.png"));
  auto disc = csv_column(dir + "/ae/metrics.csv", "train/disc_loss");
  ASSERT_EQ(disc.size(), 4u);
  EXPECT_TRUE(disc[0].empty()) << "discriminator trained before disc_start";
  EXPECT_FALSE(disc[3].empty()) << "discriminator not trained from disc_start";
  // lr = base_lr x batch (scale_lr)
  EXPECT_NEAR(std::stod(csv_column(dir + "/ae/metrics.csv", "lr")[0]), 1e-4 * 4, 1e-12);
  ASSERT_FALSE(fs::is_empty(dir + "/ae/tensorboard"));

  auto r = train(parse_yaml(ldm_config(folder, dir + "/ae"), "ldm"), quiet(dir + "/ldm"));
  EXPECT_EQ(r.steps, 6);
  for (double l : r.losses) EXPECT_TRUE(std::isfinite(l));
  EXPECT_TRUE(fs::exists(dir + "/ldm/images/step-000000006.png"));
  // warm-up schedule: lr rises from 0.1 to 1.0 of the scaled base over 2 steps
  auto lrs = csv_column(dir + "/ldm/metrics.csv", "lr");
  EXPECT_NEAR(std::stod(lrs[0]), 0.1 * 4e-4, 1e-12);
  EXPECT_NEAR(std::stod(lrs[5]), 4e-4, 1e-12);

  // the run directory loads as a model and samples
  auto m = load_latent_diffusion(dir + "/ldm/config.yaml", dir + "/ldm", {true});
  EXPECT_NE(m->scale_factor.item<double>(), 1.0) << "scale_by_std did not set scale_factor";
  torch::NoGradGuard ng;
  GuidedDenoiser d(*m, m->make_cond(m->get_learned_conditioning(torch::tensor({0, 1}))),
                   m->make_cond(m->unconditional_conditioning(2)), 2.0);
  SampleOptions so;
  so.steps = 4;
  auto x = m->decode_first_stage(sample(d, torch::randn({2, 2, 4, 4}), so));
  EXPECT_EQ(x.sizes(), (std::vector<int64_t>{2, 3, 8, 8}));

  // model.params.ckpt_path (+ ignore_keys) initialises a freshly built model from the run
  auto cfg = load_yaml(dir + "/ldm/config.yaml");
  apply_overrides(cfg, {"model.params.ckpt_path=" + dir + "/ldm", "model.params.ignore_keys=[model_ema]"});
  auto fresh = instantiate_as<LatentDiffusion>(model_node(cfg), "model");
  const std::string k = "model.diffusion_model.out.2.weight";
  EXPECT_TRUE(state_dict(*fresh).at(k).equal(state_dict(*m).at(k)));
}

// scheduler_config under AutoencoderKL (ours: the reference's trains at a
// constant rate) drives the first stage's learning rate as LatentDiffusion's.
TEST(Trainer, AutoencoderFollowsItsLrSchedule) {
  auto dir = test::temp_dir();
  auto folder = make_folder(dir + "/data");
  auto cfg = parse_yaml(ae_config(folder), "ae");
  cfg["model"]["params"]["scheduler_config"] = YAML::Load(
      "{target: ldm.lr_scheduler.LambdaLinearScheduler,"
      " params: {warm_up_steps: [0], cycle_lengths: [4], f_start: [0.0], f_max: [1.0], f_min: [0.0]}}");
  train(cfg, quiet(dir + "/ae"));
  auto lrs = csv_column(dir + "/ae/metrics.csv", "lr");
  ASSERT_EQ(lrs.size(), 4u);
  for (int i = 0; i < 4; ++i)  // linear decay over the cycle: 1, 3/4, 1/2, 1/4 of base_lr x batch
    EXPECT_NEAR(std::stod(lrs[i]), (4 - i) / 4.0 * 4e-4, 1e-12) << "step " << i + 1;
}

// ema_decay (the reference's AutoencoderKL EMA): model_ema.* shadows of the
// trainable weights, the discriminator's included, updated after every step;
// a tiny decay makes them the trained weights, a large one (LitEma's warm-up
// 2/11, 3/12, ...) keeps them apart. The run still loads as a first stage.
TEST(Trainer, AutoencoderEmaDecay) {
  auto dir = test::temp_dir();
  auto folder = make_folder(dir + "/data");
  auto shadows_vs_weights = [&](double decay, const std::string& out) {
    auto cfg = parse_yaml(ae_config(folder), "ae");
    cfg["model"]["params"]["ema_decay"] = decay;
    train(cfg, quiet(out));
    auto w = io::load_weights(weights_file(out)).tensors;
    EXPECT_EQ(w.at("model_ema.num_updates").item<int>(), 4);
    double worst = 0;
    int n = 0;
    for (const auto& [k, v] : w) {
      auto it = w.find("model_ema." + LitEma::shadow_name(k));
      if (k.rfind("model_ema.", 0) == 0 || it == w.end()) continue;
      worst = std::max(worst, (it->second - v).abs().max().item<double>());
      ++n;
    }
    for (const char* k : {"model_ema.encoderconv_inweight", "model_ema.decoderconv_outbias",
                          "model_ema.lossdiscriminatormain0weight"})
      EXPECT_TRUE(w.count(k)) << k;
    EXPECT_GE(n, 20);
    return worst;
  };
  EXPECT_LT(shadows_vs_weights(1e-6, dir + "/tiny"), 1e-5);
  EXPECT_GT(shadows_vs_weights(0.999, dir + "/slow"), 1e-4);
  auto ldm = parse_yaml(ldm_config(folder, dir + "/slow"), "ldm");
  EXPECT_NO_THROW(instantiate_as<LatentDiffusion>(model_node(ldm), "model"));
  auto bad = parse_yaml(ae_config(folder), "ae");
  bad["model"]["params"]["ema_decay"] = 1.5;
  try {
    instantiate_from_config(bad["model"], "model");
    ADD_FAILURE() << "ema_decay 1.5 accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.params.ema_decay: expected a decay in (0, 1)"), std::string::npos)
        << e.what();
  }
}

// Stopped after 3 steps and resumed, the loss sequence equals the
// uninterrupted run's exactly (CPU).
TEST(Trainer, ResumeContinuesExactly) {
  auto dir = test::temp_dir();
  auto folder = make_folder(dir + "/data");
  auto cfg = parse_yaml(ldm_config(folder, ""), "ldm");
  auto full = train(cfg, quiet(dir + "/full"));
  auto o = quiet(dir + "/part");
  o.max_steps = 3;
  auto first = train(cfg, o);
  auto o2 = quiet(dir + "/part");
  o2.resume = dir + "/part";
  auto rest = train(cfg, o2);
  ASSERT_EQ(full.losses.size(), 6u);
  ASSERT_EQ(first.losses.size() + rest.losses.size(), 6u);
  for (size_t i = 0; i < 6; ++i) {
    double got = i < 3 ? first.losses[i] : rest.losses[i - 3];
    EXPECT_EQ(got, full.losses[i]) << "step " << i;
  }
}

// `ldm sample` on a run directory of an EMA model: the EMA weights are swapped
// in for sampling and back at the end (the memory release after sampling must
// leave them alone), with and without --no-ema.
TEST(Trainer, SampleFromAnEmaRunDirectory) {
  auto dir = test::temp_dir();
  auto folder = make_folder(dir + "/data");
  auto cfg = parse_yaml(ldm_config(folder, ""), "ldm");
  auto o = quiet(dir + "/run");
  o.max_steps = 2;
  train(cfg, o);
  for (std::string extra : {"", " --no-ema"}) {
    // no --config: a run directory's config.yaml is the model's
    std::string cmd = std::string(LDM_BINARY) + " sample --model " + dir +
                      "/run --class 1 -b 2 --steps 2 -o " + dir + "/s" + extra + " > " + dir + "/log.txt 2>&1";
    EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
    EXPECT_TRUE(fs::exists(dir + "/s/000001.png")) << extra;
    fs::remove_all(dir + "/s");
  }
}

TEST(Trainer, NonFiniteLossStopsAndKeepsTheLastCheckpoint) {
  auto dir = test::temp_dir();
  auto folder = make_folder(dir + "/data");
  auto cfg = parse_yaml(ldm_config(folder, ""), "ldm");
  auto o = quiet(dir + "/run");
  o.max_steps = 3;
  train(cfg, o);
  auto good = latest_checkpoint(dir + "/run");
  apply_overrides(cfg, {"model.params.logvar_init=.inf"});  // loss = l / exp(inf) + inf
  o.resume = dir + "/run";
  o.max_steps = 6;
  try {
    train(cfg, o);
    FAIL() << "expected the guard to stop the run";
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("loss is inf"), std::string::npos) << msg;
    EXPECT_NE(msg.find(good), std::string::npos) << msg;
    // the step named is the one whose loss was not finite: the 4th, after the 3 logged
    EXPECT_EQ(msg.rfind("step 4: ", 0), 0u) << msg;
  }
  EXPECT_EQ(csv_column(dir + "/run/metrics.csv", "step").back(), "3");
  EXPECT_EQ(latest_checkpoint(dir + "/run"), good);
  EXPECT_NO_THROW(load_latent_diffusion(dir + "/run/config.yaml", dir + "/run", {true}));
}

TEST(Trainer, CorruptImageIsNamedOrSkipped) {
  auto dir = test::temp_dir();
  auto folder = make_folder(dir + "/data");
  std::ofstream(folder + "/class0/zz_broken.png") << "not a png";
  auto cfg = parse_yaml(ldm_config(folder, ""), "ldm");
  try {
    train(cfg, quiet(dir + "/a"));
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("zz_broken.png"), std::string::npos) << e.what();
  }
  apply_overrides(cfg, {"data.params.train.params.skip_bad=true"});
  EXPECT_EQ(train(cfg, quiet(dir + "/b")).steps, 6);
}

// SIGKILL at arbitrary moments of a run that checkpoints every step: the
// latest checkpoint always loads.
TEST(Trainer, KillDuringCheckpointingLeavesALoadableCheckpoint) {
  auto dir = test::temp_dir();
  auto folder = make_folder(dir + "/data");
  std::string cfg_path = dir + "/cfg.yaml";
  std::ofstream(cfg_path) << ldm_config(folder, "");
  for (int trial = 0; trial < 4; ++trial) {
    pid_t pid = fork();
    if (pid == 0) {
      execl(LDM_BINARY, LDM_BINARY, "train", cfg_path.c_str(), "-o", (dir + "/run").c_str(), "-q",
            "training.checkpoint_every=1", "training.keep_checkpoints=1", "lightning.trainer.max_steps=1000",
            (trial ? "--resume" : "--max-steps"), (trial ? (dir + "/run").c_str() : "1000"), (char*)nullptr);
      _exit(127);
    }
    // the first trial waits for a first checkpoint (a loaded machine starts
    // slowly), then each kill lands at a different moment of the saving loop
    for (int waited = 0; trial == 0 && waited < 1200 && !fs::exists(dir + "/run/checkpoints/latest"); ++waited)
      usleep(50000);
    usleep(300000 + trial * 350000);
    kill(pid, SIGKILL);
    int st;
    waitpid(pid, &st, 0);
    auto ck = latest_checkpoint(dir + "/run");
    EXPECT_NO_THROW(load_latent_diffusion(dir + "/run/config.yaml", ck, {true})) << "trial " << trial << " " << ck;
  }
}

// examples/ builds and runs: the library's public API end to end.
TEST(Example, TrainFashionMinimalRuns) {
  if (!fs::exists(FashionMNIST::kDefaultRoot)) GTEST_SKIP() << "dataset-fashion-mnist not installed";
  auto dir = test::temp_dir();
  std::string cmd = std::string(LDM_EXAMPLE) + " 6 " + dir + "/grid.png > " + dir + "/log.txt 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  auto img = io::load_image(dir + "/grid.png", 1);
  EXPECT_EQ(img.size(2), 10 * 34 + 2);  // 10 images of 32 px with 2 px padding
}

// VQ autoencoder (codebook + GAN from disc_start), then an LDM on its
// pre-quantization latents (VQModelInterface).
TEST(Trainer, VQModelThenLatentDiffusion) {
  auto dir = test::temp_dir();
  auto folder = make_folder(dir + "/data");
  std::string dd = "{double_z: false, z_channels: 2, resolution: 8, in_channels: 3, out_ch: 3, ch: 32, ch_mult: [1, 2], "
                   "num_res_blocks: 1, attn_resolutions: [], dropout: 0.0}";
  auto vq_cfg = "model:\n  base_learning_rate: 1.0e-4\n  target: ldm.models.autoencoder.VQModel\n  params:\n"
                "    embed_dim: 2\n    n_embed: 16\n    ddconfig: " + dd + "\n    lossconfig:\n"
                "      target: taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator\n"
                "      params: {disc_start: 2, codebook_weight: 1.0, disc_num_layers: 1, perceptual_weight: 0.0}\n" +
                data_section(folder) + "lightning:\n  trainer: {max_steps: 3}\ntraining: {seed: 1, log_every: 1}\n";
  auto r = train(parse_yaml(vq_cfg, "vq"), quiet(dir + "/vq"));
  EXPECT_EQ(r.steps, 3);
  auto quant = csv_column(dir + "/vq/metrics.csv", "train/quant_loss");
  ASSERT_EQ(quant.size(), 3u);
  EXPECT_GT(std::stod(quant[0]), 0.0);
  EXPECT_FALSE(csv_column(dir + "/vq/metrics.csv", "train/disc_loss")[2].empty());

  auto ldm = ldm_config(folder, "");
  auto at = ldm.find("    first_stage_config:");
  auto end = ldm.find("    cond_stage_config:");
  ldm.replace(at, end - at, "    first_stage_config:\n      target: ldm.models.autoencoder.VQModelInterface\n      params:\n"
                            "        ckpt_path: " + dir + "/vq\n        embed_dim: 2\n        n_embed: 16\n"
                            "        lossconfig: {target: torch.nn.Identity}\n        ddconfig: " + dd + "\n");
  auto y = parse_yaml(ldm, "ldm");
  apply_overrides(y, {"model.params.image_size=4", "model.params.channels=2", "model.params.unet_config.params.in_channels=2",
                      "model.params.unet_config.params.out_channels=2"});
  auto o = quiet(dir + "/ldm");
  o.max_steps = 2;
  EXPECT_EQ(train(y, o).steps, 2);
  auto m = load_latent_diffusion(dir + "/ldm/config.yaml", dir + "/ldm", {true});
  torch::NoGradGuard ng;
  auto img = torch::rand({2, 3, 8, 8}) * 2 - 1;
  auto z = m->encode_first_stage(img);
  EXPECT_EQ(z.sizes(), (std::vector<int64_t>{2, 2, 4, 4}));
  EXPECT_EQ(m->decode_first_stage(z).sizes(), img.sizes());
}

// Captions (sidecar .txt) through a CLIP text encoder, with caption dropout.
TEST(Trainer, CaptionConditionedWithTextEncoder) {
  LDM_REQUIRE_SHARED();
  auto dir = test::temp_dir();
  fs::create_directories(dir + "/caps");
  for (int i = 0; i < 8; ++i) {
    io::save_png(dir + "/caps/" + std::to_string(i) + ".png", torch::rand({3, 8, 8}));
    std::ofstream(dir + "/caps/" + std::to_string(i) + ".txt") << (i % 2 ? "a red square\n" : "a blue circle\n");
  }
  auto cfg = ldm_config(dir + "/caps", "");
  auto at = cfg.find("    cond_stage_config:");
  auto end = cfg.find("data:");
  cfg.replace(at, end - at, "    cond_stage_config:\n      target: ldm.modules.encoders.modules.FrozenCLIPEmbedder\n"
                            "      params: {width: 32, layers: 1, heads: 2}\n"
                            "    ucg_training: {txt: {p: 0.5, val: \"\"}}\n");
  auto y = parse_yaml(cfg, "txt");
  apply_overrides(y, {"model.params.cond_stage_trainable=false", "model.params.cond_stage_key=txt",
                      "training.vocab=" + test::shared_dir() + "/data/bpe_simple_vocab_16e6.txt.gz", "training.image_every=3"});
  auto o = quiet(dir + "/run");
  o.max_steps = 3;
  auto r = train(y, o);
  EXPECT_EQ(r.steps, 3);
  EXPECT_TRUE(fs::exists(dir + "/run/images/step-000000003.png"));
  auto m = load_latent_diffusion(dir + "/run/config.yaml", dir + "/run", {true});
  EXPECT_TRUE(std::dynamic_pointer_cast<FrozenCLIPEmbedder>(m->cond_stage()) != nullptr);
}

// The LPIPS term when the user gives weights (random ones here).
TEST(Trainer, AutoencoderWithPerceptualLoss) {
  auto dir = test::temp_dir();
  auto folder = make_folder(dir + "/data");
  {
    LPIPS net;
    io::TensorMap w;
    // the released lin layers are non-negative (LPIPS clamps them); random
    // signed ones could make the distance negative
    for (auto& [k, v] : state_dict(net)) w[k] = k.rfind("lin", 0) == 0 ? v.abs().contiguous() : v.contiguous();
    io::save_safetensors(dir + "/lpips.safetensors", w);
  }
  auto cfg = parse_yaml(ae_config(folder), "ae");
  apply_overrides(cfg, {"model.params.lossconfig.params.perceptual_weight=1.0",
                        "model.params.lossconfig.params.perceptual_weights=" + dir + "/lpips.safetensors",
                        "data.params.train.params.size=16"});  // VGG's four poolings need >= 16 px
  auto o = quiet(dir + "/ae");
  o.max_steps = 2;
  train(cfg, o);
  auto p = csv_column(dir + "/ae/metrics.csv", "train/p_loss");
  ASSERT_EQ(p.size(), 2u);
  EXPECT_GT(std::stod(p[0]), 0.0);
}

// bf16 autocast on the CPU (fp32 master weights): the loss stays finite and
// the weights stay float32.
TEST(Trainer, Bf16AutocastOnCpu) {
  auto dir = test::temp_dir();
  auto folder = make_folder(dir + "/data");
  auto cfg = parse_yaml(ldm_config(folder, ""), "ldm");
  apply_overrides(cfg, {"lightning.trainer.precision=bf16"});
  auto o = quiet(dir + "/run");
  o.max_steps = 2;
  auto r = train(cfg, o);
  for (double l : r.losses) EXPECT_TRUE(std::isfinite(l));
  auto w = io::load_safetensors(latest_checkpoint(dir + "/run") + "/model.safetensors");
  EXPECT_EQ(w.at("model.diffusion_model.out.2.weight").scalar_type(), torch::kFloat32);
}

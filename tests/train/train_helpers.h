// Tiny training configs and helpers shared by the training tests: an image
// folder, autoencoder and latent-diffusion configs on it, quiet options, a
// metrics.csv column.
#pragma once
#include <torch/torch.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "ldm/io/image.h"
#include "ldm/train/trainer.h"

namespace ldm::train_test {

// 24 random 8x8 RGB images in two class folders.
inline std::string make_folder(const std::string& dir) {
  auto g = torch::make_generator<at::CPUGeneratorImpl>(5);
  for (int c = 0; c < 2; ++c) {
    std::filesystem::create_directories(dir + "/class" + std::to_string(c));
    for (int i = 0; i < 12; ++i) {
      auto img = (torch::rand({3, 8, 8}, g) * 0.5 + 0.5 * c);
      io::save_png(dir + "/class" + std::to_string(c) + "/" + std::to_string(i) + ".png", img);
    }
  }
  return dir;
}

inline std::string data_section(const std::string& folder) {
  return "data:\n  target: main.DataModuleFromConfig\n  params:\n    batch_size: 4\n    num_workers: 2\n    train:\n"
         "      target: ldm.data.image_folder.ImageFolder\n      params: {root: " + folder + "}\n";
}

inline std::string ae_config(const std::string& folder) {
  return R"(model:
  base_learning_rate: 1.0e-4
  target: ldm.models.autoencoder.AutoencoderKL
  params:
    embed_dim: 2
    lossconfig:
      target: ldm.modules.losses.LPIPSWithDiscriminator
      params: {disc_start: 2, kl_weight: 1.0e-6, disc_weight: 0.5, disc_num_layers: 1, perceptual_weight: 0.0}
    ddconfig: {double_z: true, z_channels: 2, resolution: 8, in_channels: 3, out_ch: 3, ch: 32, ch_mult: [1, 2],
               num_res_blocks: 1, attn_resolutions: [], dropout: 0.0}
)" + data_section(folder) + R"(lightning:
  trainer: {max_steps: 4}
training: {seed: 1, log_every: 1, checkpoint_every: 2, image_every: 4}
)";
}

inline std::string ldm_config(const std::string& folder, const std::string& first_stage) {
  std::string fs_cfg = first_stage.empty()
                           ? "    first_stage_config: {target: ldm.models.autoencoder.IdentityFirstStage}\n"
                           : "    first_stage_config:\n      target: ldm.models.autoencoder.AutoencoderKL\n      params:\n"
                             "        ckpt_path: " + first_stage + "\n        embed_dim: 2\n"
                             "        lossconfig: {target: torch.nn.Identity}\n"
                             "        ddconfig: {double_z: true, z_channels: 2, resolution: 8, in_channels: 3, out_ch: 3, ch: 32,\n"
                             "                   ch_mult: [1, 2], num_res_blocks: 1, attn_resolutions: [], dropout: 0.0}\n";
  const int size = first_stage.empty() ? 8 : 4, ch = first_stage.empty() ? 3 : 2;
  return R"(model:
  base_learning_rate: 1.0e-4
  target: ldm.models.diffusion.ddpm.LatentDiffusion
  params:
    timesteps: 100
    first_stage_key: image
    cond_stage_key: class_label
    image_size: )" + std::to_string(size) + "\n    channels: " + std::to_string(ch) + R"(
    cond_stage_trainable: true
    conditioning_key: crossattn
    scale_by_std: true
    use_ema: true
    scheduler_config:
      target: ldm.lr_scheduler.LambdaLinearScheduler
      params: {warm_up_steps: [2], cycle_lengths: [100], f_start: [0.1], f_max: [1.0], f_min: [1.0]}
    unet_config:
      target: ldm.modules.diffusionmodules.openaimodel.UNetModel
      params: {image_size: )" + std::to_string(size) + ", in_channels: " + std::to_string(ch) + ", out_channels: " +
         std::to_string(ch) + R"(, model_channels: 32, attention_resolutions: [1],
               num_res_blocks: 1, channel_mult: [1], num_head_channels: 32, use_spatial_transformer: true,
               transformer_depth: 1, context_dim: 32}
)" + fs_cfg + R"(    cond_stage_config:
      target: ldm.modules.encoders.modules.ClassEmbedder
      params: {embed_dim: 32, n_classes: 3, key: class_label, ucg_rate: 0.2}
)" + data_section(folder) + R"(lightning:
  trainer: {max_steps: 6}
training: {seed: 3, log_every: 1, checkpoint_every: 3, image_every: 6, sample_steps: 4}
)";
}

inline TrainOptions quiet(const std::string& out) {
  TrainOptions o;
  o.out_dir = out;
  o.quiet = true;
  return o;
}

inline std::vector<std::string> csv_column(const std::string& file, const std::string& col) {
  std::ifstream in(file);
  std::string line;
  std::getline(in, line);
  std::vector<std::string> head;
  std::stringstream hs(line);
  for (std::string c; std::getline(hs, c, ',');) head.push_back(c);
  auto at = std::find(head.begin(), head.end(), col) - head.begin();
  std::vector<std::string> v;
  while (std::getline(in, line)) {
    std::stringstream ls(line);
    std::string c;
    for (int i = 0; i <= at; ++i) std::getline(ls, c, ',');
    v.push_back(c);
  }
  return v;
}

inline std::string slurp(const std::string& f) {
  std::ifstream in(f);
  return std::string((std::istreambuf_iterator<char>(in)), {});
}

}  // namespace ldm::train_test

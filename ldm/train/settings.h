// What a training run reads from its config besides the model and data: the
// lightning.trainer section and this project's `training` section (seed,
// device, log/checkpoint/image intervals, preview sampling), all checked
// when the run starts.
#pragma once
#include <yaml-cpp/yaml.h>

#include <cstdint>
#include <string>

namespace ldm {

struct Settings {
  uint64_t seed = 23;
  std::string device = "auto";
  int64_t max_steps = -1, max_epochs = -1, log_every = 50, checkpoint_every = 1000, image_every = 0;
  int accumulate = 1, keep = 2, num_workers = 2;
  double grad_clip = 0.0, sample_cfg = 3.0;
  std::string precision = "32", sampler = "ddim";
  bool scale_lr = true;
  std::string cache_latents = "auto";  // auto | true | false
  std::string vocab;                   // CLIP vocabulary for caption-conditioned models
  int64_t sample_steps = 50, batch_size = 32;
  bool quiet = false;
};

Settings read_settings(const YAML::Node& cfg);

}  // namespace ldm

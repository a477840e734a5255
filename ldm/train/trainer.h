// The training loop for the reference's config schema: model (with
// base_learning_rate and scale_lr), data (DataModuleFromConfig), the
// lightning.trainer section, and this project's `training` section (seed,
// device, log/checkpoint/image intervals). The loop is here; what differs
// between models is a task (task.h): the GAN autoencoder task (AutoencoderKL,
// VQModel) and the diffusion task (LatentDiffusion/DDPM).
#pragma once
#include <yaml-cpp/yaml.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace ldm {

struct TrainOptions {
  std::string out_dir = "outputs/train";  // checkpoints/, metrics.csv, images/, config.yaml
  std::string resume;                     // run dir or checkpoint dir
  bool force = false;                     // out_dir holds a run and no resume: start it over (else refused)
  int64_t max_steps = -1;                 // overrides lightning.trainer.max_steps
  bool quiet = false;                     // no progress line
  // data parallel (c10d Gloo): this process's rank of `world`, the
  // rendezvous (TCPStore on rank 0) and the bound on a stalled collective
  int rank = 0, world = 1;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  double dist_timeout_s = 300;
  double rendezvous_timeout_s = 120;  // joining: every rank stops within it when one is missing
};

struct TrainResult {
  int64_t steps = 0;
  std::vector<double> losses;  // per step (optimizer 0's loss)
  std::string last_checkpoint;
  double seconds = 0, peak_rss_gb = 0;
};

// key=value overrides with dotted keys, values parsed as YAML
// ("model.base_learning_rate=1e-4", "lightning.trainer.max_steps=100").
void apply_overrides(YAML::Node& cfg, const std::vector<std::string>& kv);

TrainResult train(const YAML::Node& config, const TrainOptions& o);

}  // namespace ldm

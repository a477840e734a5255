// Training checkpoints: one directory per save (model.safetensors with the
// reference's keys, optimizer.safetensors, state.json, config.yaml), made
// under a temporary name and renamed into place; `latest` names the newest
// complete one and is itself replaced atomically. A kill at any moment
// leaves the previous checkpoint intact and `latest` pointing at it.
#pragma once
#include <torch/types.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "ldm/io/run_dir.h"

namespace torch::optim { class Optimizer; }
namespace torch::nn { class Module; }

namespace ldm {

struct NamedOptimizer {
  std::string name;                // "opt0", "opt1" ...
  torch::optim::Optimizer* opt;
};

struct TrainState {
  int64_t step = 0;            // optimizer steps done
  int64_t batches = 0;         // batches consumed (the loader's position)
  int64_t epoch = 0;
  torch::Tensor rng;           // the trainer's generator state
  std::map<std::string, double> extra;  // e.g. scale_factor decided, best loss
};

// Writes <dir>/checkpoints/step-<N>, updates <dir>/checkpoints/latest and
// keeps the newest `keep` checkpoints. Returns the checkpoint's path.
std::string save_checkpoint(const std::string& run_dir, torch::nn::Module& model,
                            const std::vector<NamedOptimizer>& opts, const TrainState& st,
                            const std::string& config_yaml, int keep = 2);

// Restores model weights/buffers (strict), optimizer states and the train state.
TrainState load_checkpoint(const std::string& ckpt_dir, torch::nn::Module& model,
                           const std::vector<NamedOptimizer>& opts);

}  // namespace ldm

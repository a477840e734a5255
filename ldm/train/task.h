// What differs between the models a run trains (the trainer is the loop):
// parameters, optimizers, the loss per optimizer, images. One task per kind of
// model, chosen by the model's target through a registry.
#pragma once
#include <torch/torch.h>
#include <yaml-cpp/yaml.h>

#include <memory>
#include <string>
#include <vector>

#include "ldm/data/dataset.h"
#include "ldm/data/loader.h"
#include "ldm/data/transforms.h"
#include "ldm/modules/losses/discriminator.h"
#include "ldm/train/checkpoint.h"
#include "ldm/train/distributed.h"
#include "ldm/train/settings.h"

namespace ldm {

// What differs between models: parameters, optimizers, loss, images.
class Task {
 public:
  virtual ~Task() = default;
  virtual torch::nn::Module& module() = 0;
  virtual std::vector<NamedOptimizer> optimizers() = 0;
  virtual std::vector<torch::Tensor> params(int idx) = 0;
  virtual bool active(int, int64_t) { return true; }
  virtual LossOut loss(const Batch& b, int idx, int64_t step, torch::Generator& g) = 0;
  virtual void on_first_batch(const Batch&, torch::Generator&, bool) {}
  virtual void after_step() {}
  virtual void prepare(const Dataset&, const TransformOptions&, const Settings&) {}
  virtual void log_images(const std::string&, const Batch&, const Settings&) {}
  // Before step 1: everything later steps will use (the preview sampler) is valid.
  virtual void check_settings(const Settings&) {}
  // After each checkpoint is written (rank 0): extra files a task exports.
  virtual void on_checkpoint(const std::string& /*out_dir*/, int64_t /*step*/) {}
  torch::Device dev = torch::kCPU;
  bool quiet = false;
  // Data parallel: each step's randomness is drawn for the global batch with
  // the generator every rank shares and sliced to this rank's rows (rank,
  // rank + world, ... as the loader shards), so N ranks of B rows compute
  // exactly what one process with N*B rows does.
  int rank = 0, world = 1;
  Distributed* dist = nullptr;
  torch::Tensor my_rows(const torch::Tensor& global) const {
    return world == 1 ? global : global.slice(0, rank, global.size(0), world).contiguous();
  }
  torch::Tensor randn_rows(std::vector<int64_t> shape, torch::Generator& g) const {
    shape[0] *= world;
    return my_rows(torch::randn(shape, g));
  }
  torch::Tensor rand_rows(int64_t n, torch::Generator& g) const { return my_rows(torch::rand({n * world}, g)); }
};

// The task for a config (by its model's target; a `lora:` section makes it a
// LoRA task); `lr` is the scaled learning rate.
std::unique_ptr<Task> make_task(const YAML::Node& config, double lr, const Settings& s);

// One per kind of model, each in its own file.
std::unique_ptr<Task> make_autoencoder_task(const YAML::Node& model, double lr);
std::unique_ptr<Task> make_diffusion_task(const YAML::Node& model, double lr, const std::string& vocab);
std::unique_ptr<Task> make_lora_task(const YAML::Node& model, const YAML::Node& lora, double lr, const Settings& s);

}  // namespace ldm

#include "ldm/train/diffusion_task.h"

namespace ldm {

std::unique_ptr<Task> make_diffusion_task(const YAML::Node& model, double lr, const std::string& vocab) {
  return std::make_unique<DiffusionTask>(model, lr, vocab);
}

}  // namespace ldm

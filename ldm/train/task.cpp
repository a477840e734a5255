#include "ldm/train/task.h"

#include <functional>

#include "ldm/util/config.h"
#include "ldm/util/registry.h"

namespace ldm {

std::unique_ptr<Task> make_task(const YAML::Node& config, double lr, const Settings& s) {
  const YAML::Node model = config["model"];
  if (config["lora"] && !config["lora"].IsNull()) return make_lora_task(model, config["lora"], lr, s);
  using TaskFactory = std::function<std::unique_ptr<Task>(const YAML::Node&, double, const Settings&)>;
  auto autoencoder = [](const YAML::Node& m, double lr, const Settings&) { return make_autoencoder_task(m, lr); };
  auto diffusion = [](const YAML::Node& m, double lr, const Settings& s) { return make_diffusion_task(m, lr, s.vocab); };
  static const Registry<TaskFactory> tasks(
      "trainable model", {{"ldm.models.autoencoder.AutoencoderKL", autoencoder},
                          {"ldm.models.autoencoder.VQModel", autoencoder},
                          {"ldm.models.autoencoder.VQModelInterface", autoencoder},
                          {"ldm.models.diffusion.ddpm.LatentDiffusion", diffusion},
                          {"ldm.models.diffusion.ddpm.LatentInpaintDiffusion", diffusion},
                          {"ldm.models.diffusion.ddpm.DDPM", diffusion}});
  auto target = target_config(model, "model", {"base_learning_rate"}).target;
  return tasks.at(target, "model")(model, lr, s);
}

}  // namespace ldm

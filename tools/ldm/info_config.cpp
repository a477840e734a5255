// ldm info CONFIG.yaml: parameter counts per sub-model, built on the meta device.
#include <filesystem>
#include <iomanip>
#include <iostream>

#include "ldm/error.h"
#include "ldm/models/diffusion/sd_configs.h"
#include "ldm/util/config.h"
#include "ldm/models/registry.h"
#include "tools/ldm/commands.h"

namespace ldm::cli {

void info_config(const std::string& path) {
  // a file, or a built-in name as --config accepts (v1-inference.yaml, ...)
  auto cfg = std::filesystem::exists(path) ? load_yaml(path) : YAML::Load(builtin_config(path));
  std::cout << path << "\n";
  auto show = [](const std::string& name, const YAML::Node& node, const std::string& where) {
    std::cout << "  " << std::left << std::setw(20) << name;
    if (node.IsScalar()) {
      std::cout << node.Scalar() << "\n";
      return;
    }
    std::string target = node["target"] ? node["target"].as<std::string>() : "?";
    if (!is_known_target(target)) {
      std::cout << "(not counted: " << target << " is not built by this version)\n";
      return;
    }
    std::cout << std::right << std::setw(14) << count_parameters(node, where) << "  " << target << "\n";
  };
  YAML::Node model = cfg["model"] ? cfg["model"] : cfg;
  if (!model["target"]) throw Error(path + ": no model.target or target");
  auto p = model["params"];
  bool composite = false;
  for (const char* k : {"unet_config", "first_stage_config", "cond_stage_config"})
    if (p && p[k]) composite = true;
  std::cout << "  target: " << model["target"].as<std::string>() << "\n  parameters:\n";
  if (composite) {
    for (auto [k, name] : {std::pair{"unet_config", "unet"}, {"first_stage_config", "first_stage"},
                           {"cond_stage_config", "cond_stage"}})
      if (p[k]) show(name, p[k], "model.params." + std::string(k));
  } else {
    show("model", model, cfg["model"] ? "model" : "config");
  }
}

}  // namespace ldm::cli

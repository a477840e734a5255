// instantiate_from_config: one registry keyed by the reference's target
// strings. Unknown targets are errors listing the known ones.
#pragma once
#include <yaml-cpp/yaml.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "ldm/modules/layers.h"

namespace torch::nn { class Module; }

namespace ldm {
class Params;

using ModulePtr = std::shared_ptr<torch::nn::Module>;
using Factory = std::function<ModulePtr(const Params&)>;

// `node` is {target, params}; `where` names it in errors ("model.params.unet_config").
ModulePtr instantiate_from_config(const YAML::Node& node, const std::string& where);
template <class T>
std::shared_ptr<T> instantiate_as(const YAML::Node& node, const std::string& where) {
  return std::dynamic_pointer_cast<T>(instantiate_from_config(node, where));
}
bool is_known_target(const std::string& target);
std::vector<std::string> known_targets();

// Parameter count of the module a config describes, built on the meta device
// (no weights allocated).
int64_t count_parameters(const YAML::Node& node, const std::string& where);
int64_t count_parameters(const torch::nn::Module& m);

}  // namespace ldm

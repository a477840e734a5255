// A whole LatentDiffusion/DDPM from a reference config and a checkpoint, as
// the reference scripts do (load_model_from_config): every parameter must be
// in the file; buffers the config defines are computed when absent.
#pragma once
#include <yaml-cpp/yaml.h>

#include <memory>
#include <string>

#include "ldm/models/diffusion/ddpm.h"

namespace ldm {

struct ModelLoadOptions {
  bool quiet = false;  // no note on stderr about ignored or computed keys
};

// `config` is the YAML file (model: {target, params}, or {target, params} at
// the top); `ckpt` a .ckpt or .safetensors. The model is returned in eval mode.
std::shared_ptr<LatentDiffusion> load_latent_diffusion(const std::string& config, const std::string& ckpt,
                                                       const ModelLoadOptions& o = {});
// The model node of a config file: cfg["model"] or the root.
YAML::Node model_node(const YAML::Node& cfg);

}  // namespace ldm

// A whole LatentDiffusion/DDPM from a reference config and a checkpoint, as
// the reference scripts do (load_model_from_config): every parameter must be
// in the file; buffers the config defines are computed when absent.
#pragma once
#include <yaml-cpp/yaml.h>

#include <memory>
#include <optional>
#include <string>

#include "ldm/models/diffusion/ddpm.h"

namespace ldm {

struct ModelLoadOptions {
  bool quiet = false;      // no note on stderr about ignored or computed keys
  std::string prediction;  // "eps" or "v" overrides the config's parameterization
  // bf16: the UNet, first stage and cond stage weights converted as they are
  // read (peak memory near the converted size); run them under Autocast("bf16").
  std::optional<torch::ScalarType> dtype;
};

// `config` is the YAML file (model: {target, params}, or {target, params} at
// the top), a built-in name (configs/stable-diffusion/*.yaml), or empty: then
// detected from the checkpoint (SD 1.x/2.x/2.x-v/inpainting). `ckpt` is a
// .ckpt or .safetensors or a training run dir. The model is returned in eval mode.
std::shared_ptr<LatentDiffusion> load_latent_diffusion(const std::string& config, const std::string& ckpt,
                                                       const ModelLoadOptions& o = {});
// The model node of a config file: cfg["model"] or the root.
YAML::Node model_node(const YAML::Node& cfg);

}  // namespace ldm

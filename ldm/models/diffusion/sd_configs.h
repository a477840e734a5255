// The Stable Diffusion inference configs compiled into ldm
// (configs/stable-diffusion/*.yaml) and the choice of one from a checkpoint's
// key names and shapes, for `ldm txt2img -m FILE` without --config.
#pragma once
#include <torch/types.h>

#include <map>
#include <string>
#include <vector>

namespace ldm {

// Names of the compiled-in configs ("v1-inference.yaml", ...).
std::vector<std::string> builtin_config_names();
// The YAML text of one; ldm::Error lists the names when unknown.
const std::string& builtin_config(const std::string& name);

struct DetectedConfig {
  std::string name;  // a builtin_config name
  std::string why;   // one line: what in the checkpoint decided it
};
// SD 1.x / 2.x / 2.x-v / inpainting, told apart by the text encoder's key
// layout, the UNet's input channels and cross-attention width. 2.x eps and v
// checkpoints have identical tensors: `prediction` ("eps"/"v") decides, else
// the file name ("512"/"base" -> eps) and otherwise v (the 768 model).
// ldm::Error naming `file` when the tensors match none of them.
DetectedConfig detect_sd_config(const std::map<std::string, torch::Tensor>& weights, const std::string& file,
                                const std::string& prediction = "");

}  // namespace ldm

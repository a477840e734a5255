// LoRAs for one request: <lora:name:mult> tags taken out of a prompt and
// resolved in the LoRA directory, merged into the model's weights for the
// request and restored exactly afterwards (the originals of what was touched
// are kept), so the next request without them gives a fresh load's pixels.
#pragma once
#include <string>
#include <vector>

#include "ldm/models/diffusion/ddpm.h"
#include "ldm/pipeline/request.h"

namespace ldm::pipeline {

// Removes A1111's <lora:name:mult> / <lora:name:te_mult:unet_mult> tags from
// `prompt` and returns them with `name` resolved to a file in `dir`
// (name.safetensors, .ckpt or .pt). Names never leave `dir`.
std::vector<LoraSpec> take_lora_tags(std::string& prompt, const std::string& dir);

class LoraScope {
 public:
  // restore = false: the merge stays (a one-shot pipeline that releases its weights).
  LoraScope(LatentDiffusion& m, const std::vector<LoraSpec>& loras, bool restore);
  ~LoraScope();
  LoraScope(const LoraScope&) = delete;
  LoraScope& operator=(const LoraScope&) = delete;
  std::vector<std::string> notes;  // unmatched modules, per file
  std::string summary;             // "name:mult, ..." for the parameters text

 private:
  std::vector<std::pair<torch::Tensor, torch::Tensor>> saved_;  // (weight, its original values)
};

}  // namespace ldm::pipeline

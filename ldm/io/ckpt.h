// PyTorch zip checkpoints (.ckpt/.pt/.pth as CompVis and Stability publish
// them), read through the restricted unpickler: no code from the file runs.
#pragma once
#include "ldm/io/safetensors.h"

namespace ldm::io {

struct Checkpoint {
  TensorMap tensors;        // the state_dict (or the root dict when it holds tensors)
  int64_t global_step = -1;  // -1 when absent
  int64_t epoch = -1;
  std::map<std::string, std::string> metadata;  // safetensors metadata
};

// Reads a .ckpt/.pt/.pth zip checkpoint.
Checkpoint load_ckpt(const std::string& path, const LoadOptions& opt = {});

// Either format, told apart by content (zip magic vs safetensors header).
Checkpoint load_weights(const std::string& path, const LoadOptions& opt = {});

}  // namespace ldm::io

// safetensors read (mmap, zero-copy when the dtype matches) and atomic write.
#pragma once
#include <torch/types.h>

#include <map>
#include <optional>
#include <string>
#include <vector>

namespace ldm::io {

using TensorMap = std::map<std::string, torch::Tensor>;

struct LoadOptions {
  std::string prefix;                      // only names starting with it
  bool strip_prefix = false;               // and drop it from the returned names
  std::optional<torch::ScalarType> dtype;  // convert floating tensors to this dtype
  torch::Device device = torch::kCPU;
};

// Loads tensors from a .safetensors file; ldm::Error names the file/tensor.
TensorMap load_safetensors(const std::string& path, const LoadOptions& opt = {});
// Reads only the metadata (and tensor names) without touching the data.
std::map<std::string, std::string> safetensors_metadata(const std::string& path);

// Writes tensors (any device/dtype among the supported ones) with metadata,
// atomically through a temporary file and rename.
void save_safetensors(const std::string& path, const TensorMap& tensors,
                      const std::map<std::string, std::string>& metadata = {});

}  // namespace ldm::io

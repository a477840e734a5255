// Tensors that alias a mapped file (zero copy when no conversion is needed).
#pragma once
#include <torch/types.h>

#include <memory>
#include <optional>
#include <vector>

namespace ldm::io {
class MappedFile;

// A tensor of `shape`/`dtype` over bytes inside `file`. It aliases the mapping
// when it is aligned and no dtype/device change is asked; otherwise a copy.
torch::Tensor tensor_from_mapping(const std::shared_ptr<MappedFile>& file, uint8_t* ptr,
                                  const std::vector<int64_t>& shape, torch::ScalarType dtype,
                                  std::optional<torch::ScalarType> want, torch::Device device,
                                  const std::vector<int64_t>* strides = nullptr);
}  // namespace ldm::io

// Autocast for a scope: ops libtorch lists run in bf16/fp16 on the CPU or
// CUDA (conv, matmul), the rest in float32; the cached weight casts are
// dropped at the end. precision "32" does nothing.
#pragma once
#include <torch/types.h>

#include <string>

namespace ldm {

class Autocast {
 public:
  Autocast(const std::string& precision, torch::Device dev);  // "32", "bf16", "16"
  ~Autocast();
  Autocast(const Autocast&) = delete;
  Autocast& operator=(const Autocast&) = delete;

 private:
  bool on_ = false, cuda_ = false;
};

}  // namespace ldm

// Loading named tensors into a module, strictly: missing and unexpected keys
// and shape mismatches are listed by name.
#pragma once
#include <torch/types.h>

#include <map>
#include <string>
#include <vector>

namespace torch::nn { class Module; }

namespace ldm {

struct LoadReport {
  std::vector<std::string> missing, unexpected, mismatched;
  std::string summary(size_t max_names = 8) const;
  bool ok() const { return missing.empty() && unexpected.empty() && mismatched.empty(); }
};

// Copies `tensors` (names relative to `m`) into m's parameters and buffers,
// converting dtype/device to the module's. strict: any problem throws
// ldm::Error mentioning `what` (the file). Otherwise the report is returned.
LoadReport load_state_dict(torch::nn::Module& m, const std::map<std::string, torch::Tensor>& tensors,
                           bool strict, const std::string& what);

// Tensors under `prefix` with the prefix removed.
std::map<std::string, torch::Tensor> strip_prefix(const std::map<std::string, torch::Tensor>& t, const std::string& prefix);

std::map<std::string, torch::Tensor> state_dict(const torch::nn::Module& m);

}  // namespace ldm

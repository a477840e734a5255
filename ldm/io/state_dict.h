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
// alias: tensors of matching dtype/device become the parameters' storage
// (zero-copy loading from a mapped file; tensors shared between names stay shared).
LoadReport load_state_dict(torch::nn::Module& m, const std::map<std::string, torch::Tensor>& tensors,
                           bool strict, const std::string& what, bool alias = false);

// Tensors under `prefix` with the prefix removed.
std::map<std::string, torch::Tensor> strip_prefix(const std::map<std::string, torch::Tensor>& t, const std::string& prefix);

std::map<std::string, torch::Tensor> state_dict(const torch::nn::Module& m);

// The reference's init_from_ckpt (ckpt_path + ignore_keys of a sub-model):
// weights from a .ckpt/.safetensors file or an `ldm train` run directory;
// keys starting with any of ignore_keys are dropped, keys the module does not
// have are ignored (e.g. an autoencoder's loss.*), missing parameters are an
// error naming `where`.
void init_from_ckpt(torch::nn::Module& m, const std::string& path, const std::vector<std::string>& ignore_keys,
                    const std::string& where);

}  // namespace ldm

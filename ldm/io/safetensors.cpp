#include "ldm/io/safetensors.h"

#include <cstring>
#include <fcntl.h>
#include <unistd.h>

#include "ldm/error.h"
#include "ldm/io/atomic_file.h"
#include "ldm/io/mapped_file.h"
#include "ldm/io/safetensors_format.h"
#include "ldm/io/tensor_util.h"

namespace ldm::io {

namespace {
torch::ScalarType to_torch(StDType t) {
  switch (t) {
    case StDType::F64: return torch::kFloat64;
    case StDType::F32: return torch::kFloat32;
    case StDType::F16: return torch::kFloat16;
    case StDType::BF16: return torch::kBFloat16;
    case StDType::I64: return torch::kInt64;
    case StDType::I32: return torch::kInt32;
    case StDType::I16: return torch::kInt16;
    case StDType::I8: return torch::kInt8;
    case StDType::U8: return torch::kUInt8;
    case StDType::BOOL: return torch::kBool;
  }
  return torch::kFloat32;
}
StDType from_torch(torch::ScalarType t, const std::string& name) {
  switch (t) {
    case torch::kFloat64: return StDType::F64;
    case torch::kFloat32: return StDType::F32;
    case torch::kFloat16: return StDType::F16;
    case torch::kBFloat16: return StDType::BF16;
    case torch::kInt64: return StDType::I64;
    case torch::kInt32: return StDType::I32;
    case torch::kInt16: return StDType::I16;
    case torch::kInt8: return StDType::I8;
    case torch::kUInt8: return StDType::U8;
    case torch::kBool: return StDType::BOOL;
    default: throw Error("tensor \"" + name + "\": dtype " + std::string(c10::toString(t)) + " cannot be stored in safetensors");
  }
}
}  // namespace

TensorMap load_safetensors(const std::string& path, const LoadOptions& opt) {
  auto file = MappedFile::open(path);
  StHeader h = parse_safetensors(file->data(), file->size(), path);
  TensorMap out;
  for (const auto& t : h.tensors) {
    if (t.name.compare(0, opt.prefix.size(), opt.prefix) != 0) continue;
    std::string name = opt.strip_prefix ? t.name.substr(opt.prefix.size()) : t.name;
    uint8_t* ptr = file->mutable_data() + h.data_start + t.begin;
    out[name] = tensor_from_mapping(file, ptr, t.shape, to_torch(t.dtype), opt.dtype, opt.device);
  }
  return out;
}

std::map<std::string, std::string> safetensors_metadata(const std::string& path) {
  auto file = MappedFile::open(path);
  return parse_safetensors(file->data(), file->size(), path).metadata;
}

void save_safetensors(const std::string& path, const TensorMap& tensors,
                      const std::map<std::string, std::string>& metadata) {
  std::vector<StTensorInfo> infos;
  std::vector<torch::Tensor> data;
  for (const auto& [name, t] : tensors) {
    if (name == "__metadata__") throw Error(path + ": tensor name \"__metadata__\" is reserved");
    StTensorInfo i;
    i.name = name;
    i.dtype = from_torch(t.scalar_type(), name);
    i.shape = t.sizes().vec();
    infos.push_back(i);
    data.push_back(t.detach().to(torch::kCPU).contiguous());
  }
  std::string header = build_safetensors_header(infos, metadata);
  std::vector<std::pair<const void*, size_t>> pieces{{header.data(), header.size()}};
  for (const auto& t : data) pieces.emplace_back(t.data_ptr(), t.nbytes());
  write_file_atomic(path, pieces);
}

}  // namespace ldm::io

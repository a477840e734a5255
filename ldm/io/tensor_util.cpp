#include "ldm/io/tensor_util.h"

#include "ldm/io/mapped_file.h"

namespace ldm::io {

torch::Tensor tensor_from_mapping(const std::shared_ptr<MappedFile>& file, uint8_t* ptr,
                                  const std::vector<int64_t>& shape, torch::ScalarType dtype,
                                  std::optional<torch::ScalarType> want, torch::Device device,
                                  const std::vector<int64_t>* strides) {
  auto opts = torch::TensorOptions().dtype(dtype);
  size_t isz = c10::elementSize(dtype);
  torch::Tensor t;
  auto keep = file;  // the deleter holds the mapping alive
  auto deleter = [keep](void*) mutable { keep.reset(); };
  if (strides)
    t = torch::from_blob(ptr, shape, *strides, deleter, opts);
  else
    t = torch::from_blob(ptr, shape, deleter, opts);
  bool aligned = reinterpret_cast<uintptr_t>(ptr) % isz == 0;
  bool convert = want && *want != dtype && torch::isFloatingType(dtype);
  if (convert) return t.to(device, *want);
  if (!aligned) t = t.clone();
  return device.is_cpu() ? t : t.to(device);
}

}  // namespace ldm::io

// safetensors container format, without libtorch: header parsing and
// validation (fuzzed), and header serialisation for the writer.
// Format: u64 little-endian N, N bytes of JSON {name: {dtype, shape,
// data_offsets}, "__metadata__": {str: str}}, then the data block.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace ldm::io {

enum class StDType { F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL };

size_t st_itemsize(StDType t);
const char* st_name(StDType t);
bool st_from_name(const std::string& s, StDType* out);

struct StTensorInfo {
  std::string name;
  StDType dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // relative to the data block
  int64_t numel() const;
};

struct StHeader {
  std::vector<StTensorInfo> tensors;  // in data-offset order
  std::map<std::string, std::string> metadata;
  uint64_t data_start = 0;  // absolute offset of the data block in the file
};

// Validates everything: sizes, JSON shape, dtypes, shapes, offsets (in range,
// contiguous, no overlap, matching dtype x shape), duplicate keys. Throws
// ldm::Error naming `filename` and the tensor. Never reads past `size`.
StHeader parse_safetensors(const uint8_t* data, size_t size, const std::string& filename);

// Serialises a header (padded with spaces to a multiple of 8 bytes) for
// tensors laid out back to back in the given order; fills begin/end.
std::string build_safetensors_header(std::vector<StTensorInfo>& tensors,
                                     const std::map<std::string, std::string>& metadata);

}  // namespace ldm::io

// Minimal read-only ZIP reader over a byte range (the container PyTorch's
// torch.save writes): central directory, ZIP64, stored and deflate entries.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace ldm::io {

struct ZipEntry {
  std::string name;
  uint16_t method = 0;  // 0 stored, 8 deflate
  uint64_t comp_size = 0, size = 0;
  uint64_t data_offset = 0;  // absolute offset of the entry's data
};

class ZipReader {
 public:
  // Parses the directory; throws ldm::Error naming `filename` on any damage.
  ZipReader(const uint8_t* data, size_t size, std::string filename);
  const std::vector<ZipEntry>& entries() const { return entries_; }
  const ZipEntry* find(const std::string& name) const;
  // Finds "<any top folder>/<suffix>" as torch.save names entries "archive/data.pkl".
  const ZipEntry* find_suffix(const std::string& suffix) const;
  // Stored entries: a pointer into the mapped bytes (no copy).
  const uint8_t* stored_data(const ZipEntry& e) const;
  // Any entry, copied (inflated if needed); output bounded by the declared size.
  std::string read(const ZipEntry& e) const;
  const std::string& filename() const { return filename_; }

 private:
  const uint8_t* data_;
  size_t size_;
  std::string filename_;
  std::vector<ZipEntry> entries_;
};

}  // namespace ldm::io

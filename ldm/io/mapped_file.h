// A read-only view of a whole file through mmap; shared so tensors that alias
// the mapping keep it alive.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace ldm::io {

class MappedFile {
 public:
  static std::shared_ptr<MappedFile> open(const std::string& path);
  ~MappedFile();
  const uint8_t* data() const { return data_; }
  uint8_t* mutable_data() const { return data_; }  // private copy-on-write mapping
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  MappedFile() = default;
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
  std::string path_;
};

// Drops the resident pages wholly inside [data, data + bytes) of a private
// file mapping that nothing will read again (after converting a tensor), so
// peak memory stays near the converted size. Only for memory no other
// tensor reads: anonymous pages read back as zeros afterwards.
void release_pages(const void* data, size_t bytes);

}  // namespace ldm::io

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

// Drops the resident pages wholly inside [data, data + bytes) when that range
// lies in a live MappedFile (elsewhere: nothing happens). A later read faults
// the file's bytes back in, so it is safe; it lowers the peak after a tensor
// was converted or a module is no longer needed.
void release_pages(const void* data, size_t bytes);
// release_pages, and elsewhere (heap memory) drops the pages wholly inside the
// range too, whose values are then lost (they read back as zeros): true
// then. For weights whose only reader has a copy of its own (packed convs).
bool drop_pages(const void* data, size_t bytes);

}  // namespace ldm::io

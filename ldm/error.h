// ldm::Error: the one exception type library code throws. Messages are one
// line and name the file, key or option and what was expected.
#pragma once
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace ldm {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& msg) : std::runtime_error(msg) {}
};

// Writes `bytes` to `path` through a temporary file in the same directory and
// a rename, so a reader never sees a half-written file.
void write_file_atomic(const std::string& path, const void* data, size_t size);
// The concatenation of `pieces` (no joined copy in memory), atomically.
void write_file_atomic(const std::string& path, const std::vector<std::pair<const void*, size_t>>& pieces);

}  // namespace ldm

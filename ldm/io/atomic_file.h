// Atomic file writes: a temporary file in the same directory, fsync, rename.
#pragma once
#include <cstddef>
#include <string>
#include <utility>
#include <vector>

namespace ldm {

// Writes `bytes` to `path` through a temporary file in the same directory and
// a rename, so a reader never sees a half-written file.
void write_file_atomic(const std::string& path, const void* data, size_t size);
// The concatenation of `pieces` (no joined copy in memory), atomically.
void write_file_atomic(const std::string& path, const std::vector<std::pair<const void*, size_t>>& pieces);

}  // namespace ldm

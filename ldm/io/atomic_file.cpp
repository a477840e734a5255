#include "ldm/io/atomic_file.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <unistd.h>

#include "ldm/error.h"

namespace ldm {

void write_file_atomic(const std::string& path, const void* data, size_t size) {
  write_file_atomic(path, {{data, size}});
}

void write_file_atomic(const std::string& path, const std::vector<std::pair<const void*, size_t>>& pieces) {
  std::string tmp = path + ".tmp." + std::to_string(::getpid());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) throw Error(path + ": cannot create temporary file: " + std::strerror(errno));
  for (const auto& [data, size] : pieces) {
    const char* p = static_cast<const char*>(data);
    size_t left = size;
    while (left > 0) {
      ssize_t n = ::write(fd, p, left);
      if (n < 0) {
        if (errno == EINTR) continue;
        int e = errno;
        ::close(fd);
        ::unlink(tmp.c_str());
        throw Error(path + ": write failed: " + std::strerror(e));
      }
      p += n;
      left -= static_cast<size_t>(n);
    }
  }
  // fsync so that a crash after rename cannot expose an empty file.
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    int e = errno;
    ::unlink(tmp.c_str());
    throw Error(path + ": flush failed: " + std::strerror(e));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    int e = errno;
    ::unlink(tmp.c_str());
    throw Error(path + ": rename failed: " + std::strerror(e));
  }
}

}  // namespace ldm

#include "ldm/io/mapped_file.h"

#include <cerrno>
#include <cstring>
#include <map>
#include <mutex>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ldm/error.h"

namespace ldm::io {

namespace {
// Live mappings, so release_pages only ever drops file-backed pages.
std::mutex g_live_mutex;
std::map<uintptr_t, uintptr_t> g_live;  // start -> end
}  // namespace

std::shared_ptr<MappedFile> MappedFile::open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) throw Error(path + ": cannot open: " + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Error(path + ": not a regular file");
  }
  std::shared_ptr<MappedFile> m(new MappedFile());
  m->path_ = path;
  m->size_ = static_cast<size_t>(st.st_size);
  if (m->size_ > 0) {
    // MAP_PRIVATE + write access: tensors aliasing the file may be modified
    // in place without touching the file (copy on write).
    void* p = ::mmap(nullptr, m->size_, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      int e = errno;
      ::close(fd);
      throw Error(path + ": mmap failed: " + std::strerror(e));
    }
    m->data_ = static_cast<uint8_t*>(p);
    std::lock_guard<std::mutex> lock(g_live_mutex);
    g_live[reinterpret_cast<uintptr_t>(p)] = reinterpret_cast<uintptr_t>(p) + m->size_;
  }
  ::close(fd);
  return m;
}

MappedFile::~MappedFile() {
  if (!data_) return;
  {
    std::lock_guard<std::mutex> lock(g_live_mutex);
    g_live.erase(reinterpret_cast<uintptr_t>(data_));
  }
  ::munmap(data_, size_);
}

namespace {
// The whole pages inside [data, data + bytes), and whether they lie wholly in a live file mapping.
struct PageRange {
  uintptr_t lo, hi;
  bool file;
};
PageRange pages_of(const void* data, size_t bytes) {
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  PageRange r{(reinterpret_cast<uintptr_t>(data) + page - 1) / page * page,
              (reinterpret_cast<uintptr_t>(data) + bytes) / page * page, false};
  if (r.hi <= r.lo) return r;
  std::lock_guard<std::mutex> lock(g_live_mutex);
  auto it = g_live.upper_bound(r.lo);
  if (it != g_live.begin()) {
    --it;
    r.file = r.lo >= it->first && r.hi <= it->second;
  }
  return r;
}
}  // namespace

void release_pages(const void* data, size_t bytes) {
  const auto r = pages_of(data, bytes);
  if (r.hi > r.lo && r.file)  // wholly inside a file mapping: pages read back from the file
    ::madvise(reinterpret_cast<void*>(r.lo), r.hi - r.lo, MADV_DONTNEED);
}

bool drop_pages(const void* data, size_t bytes) {
  const auto r = pages_of(data, bytes);
  if (r.hi <= r.lo) return false;
  ::madvise(reinterpret_cast<void*>(r.lo), r.hi - r.lo, MADV_DONTNEED);
  return !r.file;
}

}  // namespace ldm::io

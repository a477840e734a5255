#include "ldm/util/memory.h"

#include <dlfcn.h>
#include <sys/resource.h>

namespace ldm {

void return_free_memory() {
  // gperftools' C API, looked up at run time: the library does not link tcmalloc, the executables do
  using Fn = void (*)();
  static Fn fn = reinterpret_cast<Fn>(dlsym(RTLD_DEFAULT, "MallocExtension_ReleaseFreeMemory"));
  if (fn) fn();
}

double peak_rss_gb() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss / 1048576.0;  // kB
}

}  // namespace ldm

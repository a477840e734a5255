#include "ldm/util/runtime.h"

#include <torch/torch.h>

#include <unistd.h>

#include <cstdlib>
#include <thread>

namespace ldm {

void init_runtime() {
  int n = static_cast<int>(std::thread::hardware_concurrency());
  for (const char* var : {"LDM_THREADS", "OMP_NUM_THREADS"})
    if (const char* e = std::getenv(var)) {
      n = std::atoi(e);
      break;
    }
  if (n > 0) torch::set_num_threads(n);
}

void reexec_with_runtime_env(char** argv) {
  if (std::getenv("LDM_NO_REEXEC") || std::getenv("LDM_RUNTIME_ENV")) return;
  setenv("LDM_RUNTIME_ENV", "1", 1);
  bool changed = false;
  auto set = [&](const char* k, const char* v) {
    if (!std::getenv(k)) {
      setenv(k, v, 0);
      changed = true;
    }
  };
  set("OMP_WAIT_POLICY", "PASSIVE");
  set("OPENBLAS_THREAD_TIMEOUT", "4");
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")) set("OPENBLAS_CORETYPE", "SKYLAKEX");
  else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) set("OPENBLAS_CORETYPE", "HASWELL");
#endif
  if (changed) execv("/proc/self/exe", argv);  // returns only on failure: go on as we are
}

}  // namespace ldm

#include "ldm/util/runtime.h"

#include <torch/torch.h>

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

}  // namespace ldm

#include "ldm/util/autocast.h"

#include <ATen/autocast_mode.h>

namespace ldm {

Autocast::Autocast(const std::string& precision, torch::Device dev) {
  if (precision == "32") return;
  on_ = true;
  cuda_ = dev.is_cuda();
  auto dtype = precision == "bf16" ? at::kBFloat16 : at::kHalf;
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
  at::autocast::set_autocast_dtype(cuda_ ? at::kCUDA : at::kCPU, dtype);
  at::autocast::set_autocast_enabled(cuda_ ? at::kCUDA : at::kCPU, true);
#else
  if (cuda_) {
    at::autocast::set_autocast_gpu_dtype(dtype);
    at::autocast::set_enabled(true);
  } else {
    at::autocast::set_autocast_cpu_dtype(dtype);
    at::autocast::set_cpu_enabled(true);
  }
#endif
}

Autocast::~Autocast() {
  if (!on_) return;
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
  at::autocast::set_autocast_enabled(cuda_ ? at::kCUDA : at::kCPU, false);
#else
  if (cuda_) at::autocast::set_enabled(false);
  else at::autocast::set_cpu_enabled(false);
#endif
  at::autocast::clear_cache();
}

}  // namespace ldm

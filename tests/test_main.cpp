#include <gtest/gtest.h>
#include <torch/torch.h>

#include "ldm/util/runtime.h"

int main(int argc, char** argv) {
  ldm::reexec_with_runtime_env(argv);  // the BLAS/OpenMP settings the CLI runs with
  ::testing::InitGoogleTest(&argc, argv);
  torch::manual_seed(0);
  return RUN_ALL_TESTS();
}

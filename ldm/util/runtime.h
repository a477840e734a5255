// Process-wide runtime settings done once at start-up.
#pragma once

namespace ldm {
// Uses every core for intra-op parallelism (libtorch picks 1 here unless
// told) unless LDM_THREADS / OMP_NUM_THREADS says otherwise.
void init_runtime();
}  // namespace ldm

// at::parallel_for for our own loops. In libtorch 1.x it is a header template
// that runs in parallel only in files compiled with OpenMP (the list in
// CMakeLists.txt); elsewhere it silently runs on one thread (winograd_conv's
// transforms did, 2026-12-03). Including this header instead of
// <ATen/Parallel.h> makes a file missing from that list fail to build.
#pragma once
#include <ATen/Parallel.h>
#include <torch/version.h>

#if TORCH_VERSION_MAJOR < 2 && !defined(_OPENMP)
#error "this file runs at::parallel_for: add it to the OpenMP list in CMakeLists.txt"
#endif

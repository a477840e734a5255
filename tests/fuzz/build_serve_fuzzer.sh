#!/usr/bin/env bash
# Builds the server-parsing fuzzer with clang (libFuzzer + ASan) against the
# libraries of an existing build (gcc's static libraries link as they are):
#   tests/fuzz/build_serve_fuzzer.sh [BUILD=build]  ->  BUILD/fuzz_serve
# Run:  BUILD/fuzz_serve -max_total_time=600 tests/fuzz/corpus_serve_json
# (new inputs it finds go into that folder; the unit tests replay it).
set -euo pipefail
cd "$(dirname "$0")/../.."
B=${1:-build}
TORCH=/usr/include/torch/csrc/api/include
HTTPLIB_FLAGS=$(pkg-config --cflags cpp-httplib)
clang++ -std=c++17 -O1 -g -fsanitize=fuzzer,address -D_GLIBCXX_USE_CXX11_ABI=1 $HTTPLIB_FLAGS \
  -I. -I/usr/include/stb -isystem "$TORCH" \
  tests/fuzz/fuzz_serve.cpp tools/ldm/serve/api.cpp ldm/io/base64.cpp ldm/io/image.cpp \
  "$B"/libldm_pipeline.a "$B"/libldm_models.a "$B"/libldm_modules.a "$B"/libldm_io.a "$B"/libldm_util.a "$B"/libldm_formats.a \
  -ltorch -ltorch_cpu -lc10 -lyaml-cpp -lstb -lz -ldnnl -lgomp -ldl -lpthread -o "$B"/fuzz_serve
echo "built $B/fuzz_serve"

#!/usr/bin/env bash
# Fuzzes the libtorch-free parsers with libFuzzer + AddressSanitizer (clang).
# usage: scripts/fuzz.sh [seconds per target, default 600]
# New interesting inputs are merged into tests/fuzz/corpus_*, which the unit
# tests replay as regression cases.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-600}
OUT=${FUZZ_BUILD:-build-fuzz}
mkdir -p "$OUT"
SRC="ldm/io/safetensors_format.cpp ldm/io/pickle.cpp ldm/io/zip.cpp ldm/error.cpp"
for t in safetensors pickle; do
  clang++ -std=c++17 -g -O1 -fsanitize=fuzzer,address,undefined -I. \
    tests/fuzz/fuzz_$t.cpp $SRC -lz -o "$OUT/fuzz_$t"
done
run() {
  local t=$1
  mkdir -p "tests/fuzz/corpus_$t" "$OUT/work_$t"
  "$OUT/fuzz_$t" -max_total_time="$SECS" -max_len=4096 -rss_limit_mb=2048 \
    "$OUT/work_$t" "tests/fuzz/corpus_$t" > "$OUT/fuzz_$t.log" 2>&1
  # keep a minimal corpus in the tree
  mkdir -p "$OUT/min_$t"
  "$OUT/fuzz_$t" -merge=1 "$OUT/min_$t" "$OUT/work_$t" "tests/fuzz/corpus_$t" >> "$OUT/fuzz_$t.log" 2>&1
  rm -rf "tests/fuzz/corpus_$t" && mv "$OUT/min_$t" "tests/fuzz/corpus_$t"
  tail -3 "$OUT/fuzz_$t.log"
}
run safetensors & run pickle & wait

#!/usr/bin/env bash
# stable-diffusion.cpp for `ldm bench --sdcpp BIN`, built outside the repository
# with -DGGML_NATIVE=ON (this CPU's instruction set). Nothing of it is committed.
# Usage: bench/setup_sdcpp.sh [DIR] [SOURCE]
#   DIR     where the source and build go (default ~/.cache/ldm/sdcpp)
#   SOURCE  an existing checkout with its ggml submodule (default: cloned from GitHub)
# A copy without its large vocabulary headers (models other than SD 1.x/2.x
# use them) builds with those headers stubbed.
set -euo pipefail
DIR=${1:-${XDG_CACHE_HOME:-$HOME/.cache}/ldm/sdcpp}
SRC=${2:-}
case "$(realpath -m "$DIR")" in "$(realpath "$(dirname "$0")/..")"*) echo "setup_sdcpp: $DIR is inside the repository" >&2; exit 1;; esac
mkdir -p "$DIR"
if [ ! -f "$DIR/src/CMakeLists.txt" ]; then
  if [ -n "$SRC" ]; then cp -a "$SRC" "$DIR/src"
  else git clone -q --recursive https://github.com/leejet/stable-diffusion.cpp "$DIR/src"; fi
fi
[ -f "$DIR/src/ggml/CMakeLists.txt" ] || { echo "setup_sdcpp: $DIR/src/ggml is empty (the ggml submodule is needed)" >&2; exit 1; }
# every vocabulary header vocab.cpp includes that the copy lacks: one empty array of the name it reads
V="$DIR/src/src/tokenizers/vocab"
if [ -f "$V/vocab.cpp" ]; then
  for h in $(sed -n 's/^#include "\(.*\.hpp\)"/\1/p' "$V/vocab.cpp"); do
    [ -s "$V/$h" ] && continue
    for a in $(grep -o 'reinterpret_cast<const char\*>([a-z0-9_]*)' "$V/vocab.cpp" | sed 's/.*(\(.*\))/\1/' | sort -u); do
      grep -qsw "$a" "$V"/*.hpp || echo "static const unsigned char $a[] = {0};  // stub (setup_sdcpp.sh)" >> "$V/$h"
    done
    touch "$V/$h"
  done
fi
cmake -S "$DIR/src" -B "$DIR/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON > "$DIR/cmake.log"
cmake --build "$DIR/build" -j "$(nproc)" --target sd-cli > "$DIR/build.log" || { tail -20 "$DIR/build.log" >&2; exit 1; }
BIN="$DIR/build/bin/sd-cli"
[ -x "$BIN" ] || BIN="$DIR/build/bin/sd"
echo "run: build/ldm bench --sdcpp $BIN"

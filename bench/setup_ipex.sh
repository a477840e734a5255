#!/usr/bin/env bash
# Intel's extension for PyTorch with diffusers, for `ldm bench --ipex-venv DIR`:
# a virtual environment of its own outside the repository, since each IPEX
# release pins one PyTorch minor version (2.8.0 is the last release on PyPI).
# Usage: bench/setup_ipex.sh [DIR]   (default ~/.cache/ldm/ipex)
set -euo pipefail
DIR=${1:-${XDG_CACHE_HOME:-$HOME/.cache}/ldm/ipex}
case "$(realpath -m "$DIR")" in "$(realpath "$(dirname "$0")/..")"*) echo "setup_ipex: $DIR is inside the repository" >&2; exit 1;; esac
[ -x "$DIR/bin/python" ] || python3 -m venv "$DIR"
"$DIR/bin/pip" install -q torch==2.8.0 intel-extension-for-pytorch==2.8.0 diffusers safetensors
"$DIR/bin/python" -c 'import torch, intel_extension_for_pytorch as ipex, diffusers; print("torch", torch.__version__, "ipex", ipex.__version__, "diffusers", diffusers.__version__)'
echo "run: build/ldm bench --ipex-venv $DIR"

#!/usr/bin/env bash
# The peers' environment for `ldm bench --peers-venv DIR`: PyTorch 2.x and
# diffusers from PyPI in a virtual environment outside the repository (PyPI's
# Linux torch wheel carries CUDA libraries, several GB; it runs on the CPU).
# Usage: bench/setup_peers.sh [DIR]   (default ~/.cache/ldm/peers)
set -euo pipefail
DIR=${1:-${XDG_CACHE_HOME:-$HOME/.cache}/ldm/peers}
case "$(realpath -m "$DIR")" in "$(realpath "$(dirname "$0")/..")"*) echo "setup_peers: $DIR is inside the repository" >&2; exit 1;; esac
[ -x "$DIR/bin/python" ] || python3 -m venv "$DIR"
"$DIR/bin/pip" install -q --upgrade torch diffusers transformers safetensors
# optional peers: installed where they install, skipped where they do not
"$DIR/bin/pip" install -q openvino || echo "setup_peers: openvino not installed (optional)"
"$DIR/bin/python" -c 'import torch, diffusers; print("torch", torch.__version__, "diffusers", diffusers.__version__)'
echo "run: build/ldm bench --peers-venv $DIR"

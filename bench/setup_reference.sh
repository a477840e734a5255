#!/usr/bin/env bash
# The reference checkout for `ldm bench --reference DIR`, outside the
# repository: Stability-AI/stablediffusion (the SD code, v-prediction), with the
# two pieces its training code imports but no longer carries: CompVis/latent-diffusion's
# ldm/modules/losses (LPIPSWithDiscriminator) and taming-transformers' taming/
# package. Debian's python3-torch (libtorch 1.13, our kernels) runs it.
# Usage: bench/setup_reference.sh [DIR]   (default ~/.cache/ldm/reference)
set -euo pipefail
DIR=${1:-${XDG_CACHE_HOME:-$HOME/.cache}/ldm/reference}
case "$(realpath -m "$DIR")" in "$(realpath "$(dirname "$0")/..")"*) echo "setup_reference: $DIR is inside the repository" >&2; exit 1;; esac
command -v /usr/bin/python3 >/dev/null && /usr/bin/python3 -c 'import torch, yaml' 2>/dev/null ||
  { echo "setup_reference: needs Debian's python3-torch and python3-yaml (apt-get install python3-torch python3-yaml)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fetch() {  # repo commit -> $tmp/name
  git -C "$tmp" init -q "$(basename "$1")"
  git -C "$tmp/$(basename "$1")" fetch -q --depth 1 --filter=blob:none "${LDM_GIT_BASE:-https://github.com}/$1" "$2"
  git -C "$tmp/$(basename "$1")" checkout -q FETCH_HEAD -- "${@:3}"
}
fetch Stability-AI/stablediffusion cf1d67a6fd5ea1aa600c4df58e5b47da45f6bdbf ldm
fetch CompVis/latent-diffusion a506df5756472e2ebaf9078affdde2c4f1502cd4 ldm/modules/losses
fetch CompVis/taming-transformers 3ba01b241669f5ade541ce990f7650a3b8f65318 taming
mkdir -p "$DIR"
cp -r "$tmp/stablediffusion/ldm" "$DIR/"
cp -r "$tmp/latent-diffusion/ldm/modules/losses" "$DIR/ldm/modules/"
cp -r "$tmp/taming-transformers/taming" "$DIR/"
echo "run: build/ldm bench --reference $DIR --only train_fashion,train_fashion_ae"

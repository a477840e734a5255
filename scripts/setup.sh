#!/usr/bin/env bash
# Installs the Debian packages ldm needs, only those missing. Idempotent:
# with everything present it runs no apt command and changes nothing.
set -euo pipefail

PKGS=(
  build-essential cmake ninja-build ccache pkg-config
  libtorch-dev            # tensor/autograd engine (1.13, CPU)
  libopenblas0-pthread    # fast BLAS for libtorch; reference BLAS is ~15x slower
  libtcmalloc-minimal4    # resident allocator: fresh big allocations are slow here
  libyaml-cpp-dev nlohmann-json3-dev libstb-dev libcli11-dev libgtest-dev
  zlib1g-dev              # gzip idx files, zip checkpoints
  libgloo-dev             # headers for c10d ProcessGroupGloo (distributed training)
  libdnnl-dev             # oneDNN headers: cached inference conv primitives, Winograd
  libcpp-httplib-dev      # ldm serve: HTTP server (and the tests' client)
  dataset-fashion-mnist   # the built-in default dataset
  chromium chromium-driver python3-selenium  # tests only: the server's web page in a real browser
)

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all ${#PKGS[@]} packages present"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"

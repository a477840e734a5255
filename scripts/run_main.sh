#!/usr/bin/env bash
# The main job. Until the training pipeline lands it shows the CLI.
set -euo pipefail
BUILD=${1:-build}
"$BUILD/ldm" --help

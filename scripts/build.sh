#!/usr/bin/env bash
# Configure and build q3r into build/ (or $Q3R_BUILD_DIR) with warnings as errors.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dir="${Q3R_BUILD_DIR:-$root/build}"
cmake -S "$root" -B "$dir" -DQ3R_WERROR=ON "$@" >/dev/null
cmake --build "$dir" -j"$(nproc)" >/dev/null

#!/usr/bin/env bash
# Make sure the Debian packages q3r needs are present: installs them with apt-get when
# running as root, otherwise prints the exact command to run.
#   scripts/deps.sh build   compiler, CMake, OpenBLAS (OpenMP build), zlib, Fashion-MNIST, gnuplot,
#                           the King James Bible (bible-kjv) and the fortunes files (fortunes): the
#                           texts of scripts/text-data.sh,
#                           Open MPI (data-parallel training under mpirun; q3r builds without it)
#   scripts/deps.sh test    the above plus Debian's torch and numpy (reference tests)
#   scripts/deps.sh fuzz    the build's plus clang 14 with libFuzzer and the sanitizer runtimes
#                           (libclang-rt-14-dev) and LLVM's OpenMP for clang (libomp-14-dev):
#                           scripts/fuzz.sh
set -euo pipefail
want=(build-essential cmake pkg-config libopenblas-openmp-dev zlib1g-dev dataset-fashion-mnist gnuplot-nox
  bible-kjv fortunes openmpi-bin libopenmpi-dev)
case "${1:-build}" in
  build) ;;
  test) want+=(python3-numpy python3-torch) ;;
  fuzz) want+=(clang-14 libclang-rt-14-dev libomp-14-dev) ;;
  *) echo "usage: scripts/deps.sh [build|test|fuzz]" >&2; exit 2 ;;
esac
missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "q3r needs these Debian packages: ${missing[*]}" >&2
  echo "install them with:  sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "installing: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null

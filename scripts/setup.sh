#!/usr/bin/env bash
# Installs the build dependencies from Debian (bookworm) and builds subbit in ./build (Release).
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
packages=(cmake ninja-build g++ pkg-config xz-utils libhwy-dev nlohmann-json3-dev libcli11-dev
          libfmt-dev libgtest-dev libgmock-dev libbenchmark-dev libtorch-dev
          libgloo-dev  # libtorch's Gloo process group: data-parallel QAT
          libopenblas0-openmp  # libtorch with the reference BLAS trains ~16x slower
          libcpp-httplib-dev python3 python3-jinja2  # serve; its tests; chat-template reference
          clang-14 libclang-rt-14-dev libomp-14-dev)  # sanitizer build and fuzzing: scripts/fuzz.sh
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  sudo_if_needed apt-get update -qq
  sudo_if_needed apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build build -j "$(nproc)"

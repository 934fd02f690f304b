#!/usr/bin/env bash
# Builds the `cuda` feature of every library crate without a GPU and without a system CUDA: NVIDIA's compiler, headers and NVVM
# come as PyPI wheels (pinned below), unpacked once into a cached folder. Fails loudly on any error.
#
#   bash scripts/cuda-build.sh    # toolkit and build cached in ~/.cache/emofuse (EMOFUSE_CUDA_CACHE)
#
# Exit status: 0 built; 3 the toolkit could not be fetched (no network to PyPI: nothing was checked);
# anything else a failure (the build itself, a broken cache). Cold: about 13 minutes on 2 cores (the
# toolkit, 0.35 GB, and candle's CUDA kernels); with the cache: under a minute. Cache: about 2.2 GB.
#
# The cache outlives the clone, so a later run (CI on a fresh clone) neither downloads nor rebuilds the
# dependencies again.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "cuda-build: $*"; }
fail() { echo "cuda-build: FAILED: $*" >&2; exit 1; }
unavailable() { echo "cuda-build: toolkit unavailable: $*" >&2; exit 3; }

# CUDA 13.5 wheels: nvcc (driver, cudafe++, ptxas, nvlink), crt headers, NVVM (cicc), runtime headers, CCCL.
wheels=(
  nvidia-cuda-nvcc==13.5.37
  nvidia-cuda-crt==13.5.37
  nvidia-nvvm==13.5.37
  nvidia-cuda-runtime==13.5.37
  nvidia-cuda-cccl==13.3.5.0.6
)
cache="${EMOFUSE_CUDA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/emofuse}"
dir="$cache/cuda-toolkit"
stamp="$dir/wheels.txt"
if [ "$(cat "$stamp" 2>/dev/null)" != "${wheels[*]}" ]; then
  command -v python3 >/dev/null || fail "python3 is needed to fetch the CUDA wheels"
  say "fetching ${wheels[*]} into $dir (once)"
  rm -rf "$dir"
  mkdir -p "$dir/wheels"
  # A private venv: Debian's python3 has no pip of its own.
  python3 -m venv "$dir/venv" || fail "python3 -m venv (Debian: apt-get install python3-venv)"
  "$dir/venv/bin/pip" download --quiet --no-deps -d "$dir/wheels" "${wheels[@]}" ||
    { rm -rf "$dir"; unavailable "pip download ${wheels[*]} failed"; }
  for w in "$dir"/wheels/*.whl; do python3 -m zipfile -e "$w" "$dir" || fail "unpacking $w"; done
  rm -rf "$dir/wheels" "$dir/venv"
  chmod -R u+x "$dir/nvidia/cu13/bin" "$dir/nvidia/cu13/nvvm/bin"
  echo "${wheels[*]}" > "$stamp"
fi
cuda="$dir/nvidia/cu13"
[ -x "$cuda/bin/nvcc" ] || fail "no nvcc in $cuda/bin"
export PATH="$cuda/bin:$PATH" CUDA_ROOT="$cuda" CUDA_PATH="$cuda" CUDA_TOOLKIT_ROOT_DIR="$cuda"
# No GPU to query: name the target (Ampere, sm_80) and the toolkit version cudarc 0.19 knows (13.5 is not
# in its list; 13.4's API is what the build uses).
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-80}" CUDARC_CUDA_VERSION="${CUDARC_CUDA_VERSION:-13040}"
say "$(nvcc --version | tail -1)"
# Every library crate (emofuse-experiments depends on all the others) with CUDA kernels compiled to PTX.
# Linking a binary also needs cuBLAS, cuRAND, NVRTC and the driver's stub library (further wheels, about
# 0.6 GB): not fetched yet.
CARGO_TARGET_DIR="$cache/target" cargo build --locked -p emofuse-experiments --lib --features cuda ||
  fail "cargo build --features cuda"
say "built every library crate with --features cuda (compute capability $CUDA_COMPUTE_CAP)"

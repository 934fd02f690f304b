#!/usr/bin/env bash
# Builds the `cuda` feature of every library crate without a GPU and without a system CUDA: NVIDIA's compiler, headers and NVVM
# come as PyPI wheels (pinned below), unpacked once into a cached folder. Fails loudly on any error.
#
#   bash scripts/cuda-build.sh    # toolkit and build cached in ~/.cache/emofuse (EMOFUSE_CUDA_CACHE)
#   CUDA_COMPUTE_CAP=90 EMOFUSE_CUDA_PROFILE=release bash scripts/cuda-build.sh   # an H100/H200 binary
#
# The toolkit is CUDA 13.0, the oldest of its major version, on purpose: the kernels are embedded as PTX,
# and a driver refuses PTX from a newer toolkit than its own (CUDA_ERROR_UNSUPPORTED_PTX_VERSION), so
# 13.0's PTX loads on every CUDA 13 driver (580 and later).
#
# Exit status: 0 built; 3 the toolkit could not be fetched (no network to PyPI: nothing was checked);
# anything else a failure (the build itself, a broken cache). Cold: about 13 minutes on 2 cores (the
# toolkit, 0.35 GB, and candle's CUDA kernels); with the cache: a minute or two (our own crates and the
# link of xtask). Cache: about 2 GB (1.8 GB measured on 2026-12-02: the unpacked toolkit 0.27 GB, the
# build the rest).
#
# The cache outlives the clone, so a later run (CI on a fresh clone) neither downloads nor rebuilds the
# dependencies again.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "cuda-build: $*"; }
fail() { echo "cuda-build: FAILED: $*" >&2; exit 1; }
unavailable() { echo "cuda-build: toolkit unavailable: $*" >&2; exit 3; }

# CUDA 13.0 wheels: nvcc (driver, cudafe++, ptxas, nvlink), crt headers, NVVM (cicc), runtime headers, CCCL.
wheels=(
  nvidia-cuda-nvcc==13.0.88
  nvidia-cuda-crt==13.0.88
  nvidia-nvvm==13.0.88
  nvidia-cuda-runtime==13.0.96
  nvidia-cuda-cccl==13.0.85
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
# No GPU to query: name the target (Ampere, sm_80, unless CUDA_COMPUTE_CAP says otherwise) and the
# toolkit's API version for cudarc.
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-80}" CUDARC_CUDA_VERSION="${CUDARC_CUDA_VERSION:-13000}"
profile="${EMOFUSE_CUDA_PROFILE:-dev}"
case "$profile" in dev) outdir=debug ;; release) outdir=release ;; *) fail "EMOFUSE_CUDA_PROFILE is dev or release, not $profile" ;; esac
say "$(nvcc --version | tail -1); compute capability $CUDA_COMPUTE_CAP; profile $profile"
# Every library crate (emofuse-experiments depends on all the others) with CUDA kernels compiled to PTX.
CARGO_TARGET_DIR="$cache/target" cargo build --locked --profile "$profile" -p emofuse-experiments --lib --features cuda ||
  fail "cargo build --features cuda"
say "built every library crate with --features cuda (compute capability $CUDA_COMPUTE_CAP)"

# The `xtask` binary, linked. candle 0.11 links cudarc dynamically against the driver (libcuda.so.1),
# cuBLAS, cuBLASLt, cuRAND and NVRTC; the real CUDA runtime comes with the wheels above. The other five
# are link stubs, as NVIDIA's own `lib/stubs/libcuda.so`: a shared library with the real library's soname
# that defines every function cudarc references, as empty functions (no wheels of 0.6 GB for symbols
# alone). The binary records the sonames, so on a machine with the driver and CUDA 13 the real libraries
# are loaded; here it must still start and run on the CPU with the stubs in place.
stubs="$cache/cuda-stubs"
rm -rf "$stubs" && mkdir -p "$stubs/run"
ln -s "$cuda/lib/libcudart.so.13" "$stubs/libcudart.so"
symbols=$(nm -u --format=just-symbols "$cache"/target/$outdir/deps/libcudarc-*.rlib 2>/dev/null | sort -u) ||
  fail "no cudarc library to read symbols from"
for pair in cuda:1 cublas:13 cublasLt:13 curand:10 nvrtc:13; do
  lib=${pair%%:*} so=${pair##*:}
  # The library each symbol belongs to, by its prefix (`cuda…` is the runtime's, not stubbed).
  awk -v lib="$lib" '{
    if ($0 ~ /^nvrtc/) l = "nvrtc"; else if ($0 ~ /^curand/) l = "curand";
    else if ($0 ~ /^cublasLt/) l = "cublasLt"; else if ($0 ~ /^cublas/) l = "cublas";
    else if ($0 ~ /^cuda/) l = "cudart"; else if ($0 ~ /^cu[A-Z]/) l = "cuda"; else l = "";
    if (l == lib) print "void " $0 "(void) {}";
  }' <<<"$symbols" > "$stubs/$lib.c"
  [ -s "$stubs/$lib.c" ] || fail "cudarc references no $lib function: has candle's CUDA linking changed?"
  cc -shared -fPIC -Wl,-soname,"lib$lib.so.$so" -o "$stubs/lib$lib.so" "$stubs/$lib.c" ||
    fail "building the $lib link stub"
  ln -s "../lib$lib.so" "$stubs/run/lib$lib.so.$so"
done
CARGO_TARGET_DIR="$cache/target" cargo rustc --locked --profile "$profile" -p xtask --bin xtask --features cuda -- \
  -L "native=$stubs" || fail "linking xtask with --features cuda"
bin="$cache/target/$outdir/xtask"
needed=$(readelf -d "$bin" | grep NEEDED)
for so in libcuda.so.1 libcublas.so.13 libcudart.so.13; do
  grep -q "\[$so\]" <<<"$needed" || fail "xtask does not load $so: $needed"
done
LD_LIBRARY_PATH="$stubs/run:$cuda/lib" "$bin" bench --mfcc-only --repeats 1 >/dev/null ||
  fail "the cuda build of xtask does not run on the CPU"
say "linked xtask with --features cuda (needs $(grep -o 'lib[A-Za-z]*\.so\.[0-9]*' <<<"$needed" | grep -E 'cu|nvrtc' | tr '\n' ' ')at run time) and ran it on the CPU"

#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: checks that the `cuda` build computes what the CPU computes, and times
# both. Three steps, each printed:
#   1. `xtask device-check --device cuda`: every model kind's logits and gradients on one batch, GPU
#      against the CPU kernels (fails when a relative difference is over 1e-3);
#   2. `xtask bench --device cuda` and `--device cpu`: training and inference throughput per model;
#   3. the default comparison (every fusion mode, 5 epochs, built-in synthetic data) on the CPU and on
#      the GPU: both accuracies, final training losses and training times per run.
#
#   bash scripts/gpu-check.sh [OUT]     # OUT: where the runs and JSON go (default: a fresh temporary folder)
#   EMOFUSE_XTASK=path/to/xtask bash scripts/gpu-check.sh OUT   # a binary built elsewhere (no cargo here)
#
# Without EMOFUSE_XTASK it builds `xtask --features cuda` with cargo (the system's nvcc, else the toolkit
# that `scripts/cuda-build.sh` caches). The CUDA 13 libraries (cuBLAS, cuRAND, NVRTC, the runtime) come
# from the system, else from the `nvidia-*` Python wheels of the machine's python3 (PyTorch's).
# Exit status: 0 ran and the device check passed (the comparison's agreement is printed, not judged: the
# GPU's arithmetic differs from the CPU kernels' in the last bits, and training amplifies that); 3 no GPU
# here; anything else a failure.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "gpu-check: $*"; }
fail() { echo "gpu-check: FAILED: $*" >&2; exit 1; }

command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1 || { echo "gpu-check: no NVIDIA GPU here" >&2; exit 3; }
say "$(nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv,noheader | head -1)"
say "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(nproc) cores"
cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d ' .')

if [ -n "${EMOFUSE_XTASK:-}" ]; then
  bin="$EMOFUSE_XTASK"
else
  if ! command -v nvcc >/dev/null; then
    cuda="${EMOFUSE_CUDA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/emofuse}/cuda-toolkit/nvidia/cu13"
    [ -x "$cuda/bin/nvcc" ] || fail "no nvcc on PATH and none in $cuda (run scripts/cuda-build.sh first)"
    export PATH="$cuda/bin:$PATH" CUDA_ROOT="$cuda" CUDA_PATH="$cuda" CUDA_TOOLKIT_ROOT_DIR="$cuda"
    export LD_LIBRARY_PATH="$cuda/lib:${LD_LIBRARY_PATH:-}"
  fi
  export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-$cap}" CUDARC_CUDA_VERSION="${CUDARC_CUDA_VERSION:-13000}"
  say "$(nvcc --version | tail -1); compute capability $CUDA_COMPUTE_CAP"
  cargo build --locked --release -p xtask --features cuda || fail "cargo build --features cuda"
  bin=target/release/xtask
fi
[ -x "$bin" ] || fail "no executable xtask at $bin"

# The libraries the binary needs and the loader cannot find: look in the Python wheels' folders.
missing() { ldd "$bin" | awk '/not found/ {print $1}'; }
if [ -n "$(missing)" ] && command -v python3 >/dev/null; then
  wheels=$(python3 - <<'EOF' 2>/dev/null || true
import pathlib, sys
dirs = set()
for p in map(pathlib.Path, sys.path):
    if (p / "nvidia").is_dir():
        dirs.update(str(f.parent) for f in (p / "nvidia").rglob("lib*.so*"))
print(":".join(sorted(dirs)))
EOF
)
  [ -n "$wheels" ] && export LD_LIBRARY_PATH="$wheels:${LD_LIBRARY_PATH:-}"
fi
# The driver's library, where a container mounts it outside the loader's path.
if [[ "$(missing)" == *libcuda.so.1* ]]; then
  for d in /usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/lib/x86_64-linux-gnu /usr/lib64 /usr/local/cuda/compat; do
    [ -e "$d/libcuda.so.1" ] && { export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-}:$d"; break; }
  done
fi
[ -z "$(missing)" ] || fail "the loader cannot find: $(missing | tr '\n' ' ')"
say "libraries: $(ldd "$bin" | grep -E 'libcu|nvrtc' | awk '{print $1 " → " $3}' | tr '\n' ' ')"

out="${1:-$(mktemp -d)}"
mkdir -p "$out"
say "1. device check (GPU against the CPU kernels) [${SECONDS} s]"
"$bin" device-check --device cuda --json "$out/device-check.json" || fail "device check"

say "2. throughput (bench), GPU then CPU [${SECONDS} s]"
for device in cuda cpu; do
  "$bin" bench --device "$device" --repeats 3 --json "$out/bench-$device.json" 2>&1 || fail "bench --device $device"
done

say "3. the default comparison on both [${SECONDS} s]"
for device in cpu cuda; do
  start=$(date +%s)
  "$bin" compare --fusion-mode all --epochs 5 --device "$device" --out "$out/$device" >/dev/null ||
    fail "compare --device $device"
  say "$device: $(( $(date +%s) - start )) s in all"
done

python3 - "$out" <<'EOF'
import json, sys
out = sys.argv[1]
runs = {d: json.load(open(f"{out}/{d}/results.json"))["runs"] for d in ("cpu", "cuda")}
print(f"{'run':<40} {'acc cpu':>8} {'acc gpu':>8} {'loss cpu':>9} {'loss gpu':>9} {'train s cpu':>11} {'train s gpu':>11}")
for c, g in zip(runs["cpu"], runs["cuda"]):
    name = f"s{c['subject']} {c['modality']} {c['fusion_mode']}"
    print(f"{name:<40} {c['accuracy']:8.3f} {g['accuracy']:8.3f} {c['loss']:9.4f} {g['loss']:9.4f} "
          f"{c['train_seconds']:11.2f} {g['train_seconds']:11.2f}")
diff = max(abs(c["accuracy"] - g["accuracy"]) for c, g in zip(runs["cpu"], runs["cuda"]))
print(f"largest accuracy difference: {diff:.3f}")
EOF

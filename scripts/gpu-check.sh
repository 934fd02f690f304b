#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: builds `xtask` with the `cuda` feature, runs the default comparison
# (every fusion mode, 5 epochs, built-in synthetic data) once on the CPU and once on the GPU, and prints,
# per run, both accuracies, both final training losses and both training times.
#
#   bash scripts/gpu-check.sh [OUT]     # OUT: where the two runs go (default: a fresh temporary folder)
#
# nvcc: the system's, else the toolkit that `scripts/cuda-build.sh` caches (run that first). The compute
# capability is read from `nvidia-smi`. Exit status: 0 ran (agreement is printed, not judged: the GPU's
# arithmetic differs from the CPU kernels' in the last bits, and training amplifies that); 3 no GPU here;
# anything else a failure. The library tests (PyTorch parity included) run on the CPU only: the CPU kernels'
# candle-op fallbacks, which are what runs on a GPU, are checked against them on the CPU by
# `cargo test --workspace`.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "gpu-check: $*"; }
fail() { echo "gpu-check: FAILED: $*" >&2; exit 1; }

command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1 || { echo "gpu-check: no NVIDIA GPU here" >&2; exit 3; }
say "$(nvidia-smi --query-gpu=name,compute_cap,driver_version --format=csv,noheader | head -1)"
cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d ' .')
if ! command -v nvcc >/dev/null; then
  cuda="${EMOFUSE_CUDA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/emofuse}/cuda-toolkit/nvidia/cu13"
  [ -x "$cuda/bin/nvcc" ] || fail "no nvcc on PATH and none in $cuda (run scripts/cuda-build.sh first)"
  export PATH="$cuda/bin:$PATH" CUDA_ROOT="$cuda" CUDA_PATH="$cuda" CUDA_TOOLKIT_ROOT_DIR="$cuda"
  export CUDARC_CUDA_VERSION="${CUDARC_CUDA_VERSION:-13040}" LD_LIBRARY_PATH="$cuda/lib:${LD_LIBRARY_PATH:-}"
fi
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-$cap}"
say "$(nvcc --version | tail -1); compute capability $CUDA_COMPUTE_CAP"
cargo build --locked --release -p xtask --features cuda || fail "cargo build --features cuda"
bin=target/release/xtask

out="${1:-$(mktemp -d)}"
for device in cpu cuda; do
  say "compare on $device → $out/$device"
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

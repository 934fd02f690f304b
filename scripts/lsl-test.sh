#!/usr/bin/env bash
# Tests the `lsl` feature of `online` against a real liblsl: the library comes from pylsl's PyPI wheel
# (pinned below, checked by its SHA-256), unpacked once into a cached folder; the test then pushes
# through local LSL outlets and reads through inlets in one process.
#
#   bash scripts/lsl-test.sh      # liblsl cached in ~/.cache/emofuse (EMOFUSE_LSL_CACHE)
#
# Exit status: 0 tested; 3 the wheel could not be fetched (no network to PyPI: nothing was checked);
# anything else a failure.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "lsl-test: $*"; }
fail() { echo "lsl-test: FAILED: $*" >&2; exit 1; }
unavailable() { echo "lsl-test: liblsl unavailable: $*" >&2; exit 3; }

wheel=pylsl==1.18.6
sha=d184abba5318c85a456ff1ca88a1960e194ab7c7ac2f31b6d0a06726e36b91e1
cache="${EMOFUSE_LSL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/emofuse}"
dir="$cache/liblsl"
lib="$dir/pylsl/lib/liblsl.so"
if [ "$(cat "$dir/wheel.txt" 2>/dev/null)" != "$wheel $sha" ] || [ ! -f "$lib" ]; then
  command -v python3 >/dev/null || fail "python3 is needed to fetch $wheel"
  say "fetching $wheel into $dir (once)"
  rm -rf "$dir"
  mkdir -p "$dir/wheel"
  # A private venv: Debian's python3 has no pip of its own.
  python3 -m venv "$dir/venv" || fail "python3 -m venv (Debian: apt-get install python3-venv)"
  "$dir/venv/bin/pip" download --quiet --no-deps --only-binary=:all: --platform manylinux_2_35_x86_64 \
    -d "$dir/wheel" "$wheel" || { rm -rf "$dir"; unavailable "pip download $wheel failed"; }
  w=$(ls "$dir"/wheel/*.whl)
  echo "$sha  $w" | sha256sum -c --quiet - || { rm -rf "$dir"; fail "$w does not have the pinned SHA-256"; }
  python3 -m zipfile -e "$w" "$dir" || fail "unpacking $w"
  rm -rf "$dir/wheel" "$dir/venv"
  echo "$wheel $sha" > "$dir/wheel.txt"
fi
[ -f "$lib" ] || fail "no liblsl in $dir"
say "liblsl from $wheel: $lib"
cargo clippy --locked -p emofuse-online --features lsl --all-targets -- -D warnings
EMOFUSE_LIBLSL="$lib" cargo test --locked -p emofuse-online --features lsl
cargo clippy --locked -p xtask --features lsl --all-targets -- -D warnings
EMOFUSE_LIBLSL="$lib" cargo test --locked -p xtask --features lsl --test cli stream_replays

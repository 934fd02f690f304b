#!/usr/bin/env bash
# Runs every ```sh block of docs/guide.md, in order, failing on the first command that fails.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf /tmp/emofuse-guide && mkdir -p /tmp/emofuse-guide
script=$(awk '/^```sh$/{on=1; next} /^```$/{on=0} on' docs/guide.md)
[ -n "$script" ] || { echo "docs/guide.md has no sh blocks" >&2; exit 1; }
bash -euxo pipefail -c "$script"

#!/usr/bin/env bash
# The main job on the embedded default: train DANN on syndigits -> handwritten, evaluate it,
# print where the bundle went. Extra arguments go to `edgeda train` (e.g. --iters 500).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
OUT=${OUT:-runs/dann-demo}
edgeda train --method dann --source syndigits --target handwritten --config configs/digits-cpu.yaml --out "$OUT" "$@"
edgeda eval "$OUT/model.edgeda" --data handwritten:test

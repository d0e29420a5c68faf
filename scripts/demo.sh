#!/usr/bin/env bash
# The main job on the embedded default: train DANN on syndigits -> handwritten, evaluate it,
# print where the bundle went. Extra arguments go to `edgeda train` (e.g. --iters 500).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh  # sets PY: the Python that holds edgeda (a project .venv where pip may not install)
OUT=${OUT:-runs/dann-demo}
# One torch thread, as the stored benchmark runs: float sums in another order (other thread counts)
# take training elsewhere, so the same seed gives the same accuracy only with the same thread count.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
"$PY" -m edgeda train --method dann --source syndigits --target handwritten --config configs/digits-cpu.yaml --out "$OUT" "$@"
"$PY" -m edgeda eval "$OUT/model.edgeda" --data handwritten:test

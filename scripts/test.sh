#!/usr/bin/env bash
# Install edgeda with its test dependencies and run the test suite (CPU-only; GPU/TensorRT tests skip).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh dev  # sets PY: the Python that holds edgeda (a project .venv where pip may not install)
set +e
"$PY" -m pytest -q "$@"
rc=$?
set -e
# pytest exits 5 when it collected no tests: that is a failure of the suite, say so.
if [ $rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi
exit $rc

#!/usr/bin/env bash
# Install edgeda and what it needs into the current Python environment.
# Never replaces an installed torch (Jetson ships a special build); where none is installed,
# installs the tested torch==2.13.0. Usage: scripts/setup.sh [dev]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if "$PY" -c "import torch" 2>/dev/null; then
  echo "using the installed torch $("$PY" -c 'import torch; print(torch.__version__)')"
else
  "$PY" -m pip install -q "torch==2.13.0"
fi
extra=""
[ "${1:-}" = "dev" ] && extra="[dev]"
# torch is already satisfied, so pip leaves it as it is.
"$PY" -m pip install -q -e ".${extra}"

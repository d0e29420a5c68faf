#!/usr/bin/env bash
# Install edgeda and what it needs. Usage: bash scripts/setup.sh [dev], or `source scripts/setup.sh [dev]`
# from another script, which then runs "$PY" (the Python that holds edgeda).
# Where it installs: the active virtual environment (or conda environment) if there is one; else the
# Python it finds, unless that Python is externally managed (PEP 668: pip refuses to install into it),
# in which case it creates (once) and uses the project environment .venv/ in the repository, with the
# system's packages visible, so an installed torch is used from there.
# Never replaces an installed torch (Jetson ships a special build); where none is installed, installs
# the tested torch==2.13.0.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY=${PYTHON:-python3}
in_env=$("$PY" -c 'import sys, os; print(int(sys.prefix != sys.base_prefix or bool(os.environ.get("CONDA_PREFIX"))))')
managed=$("$PY" -c 'import os, sysconfig; print(int(os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED"))))')
if [ "$in_env" = "0" ] && { [ "$managed" = "1" ] || [ -x "$ROOT/.venv/bin/python" ]; }; then
  if [ ! -x "$ROOT/.venv/bin/python" ]; then
    echo "$PY is externally managed (PEP 668); creating the project environment $ROOT/.venv"
    "$PY" -m venv --system-site-packages "$ROOT/.venv" || {
      echo "error: cannot create $ROOT/.venv (on Debian/Ubuntu: apt install python3-venv)" >&2; exit 1; }
  fi
  echo "using the project environment $ROOT/.venv (edgeda and its tools are in $ROOT/.venv/bin)"
  PY="$ROOT/.venv/bin/python"
  export VIRTUAL_ENV="$ROOT/.venv"
  export PATH="$ROOT/.venv/bin:$PATH"
fi
if "$PY" -c "import torch" 2>/dev/null; then
  echo "using the installed torch $("$PY" -c 'import torch; print(torch.__version__)')"
else
  "$PY" -m pip install -q "torch==2.13.0"
fi
extra=""
[ "${1:-}" = "dev" ] && extra="[dev]"
# torch is already satisfied, so pip leaves it as it is.
"$PY" -m pip install -q -e ".${extra}"
export PY

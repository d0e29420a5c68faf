"""Where the benchmark scripts keep their working files (training runs, bundles, rendered target
folders, lock files): ``$EDGEDA_BENCH_SCRATCH/NAME``, else NAME in the system's temporary folder
(``/tmp`` on Linux). Results never go here; they are written under ``benchmarks/results/``."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def scratch(name: str) -> Path:
    """The working folder ``name`` (not created)."""
    return Path(os.environ.get("EDGEDA_BENCH_SCRATCH") or tempfile.gettempdir()) / name

"""Where the benchmark scripts keep their working files (training runs, bundles, rendered target
folders, lock files): ``$EDGEDA_BENCH_SCRATCH/NAME``, else ``/tmp/NAME``. Results never go here;
they are written under ``benchmarks/results/``.

The default stays ``/tmp`` rather than the system's temporary folder: the stored dense runs record
the path of the bundle they started from (``--init``) in their config, and the summaries pair a
stored run with the current settings by comparing configs, so the path must not depend on
``$TMPDIR``."""
from __future__ import annotations

import os
from pathlib import Path

DEFAULT_ROOT = "/tmp"


def scratch(name: str) -> Path:
    """The working folder ``name`` (not created)."""
    return Path(os.environ.get("EDGEDA_BENCH_SCRATCH") or DEFAULT_ROOT) / name

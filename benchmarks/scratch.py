"""Where the benchmark scripts keep their working files (training runs, bundles, rendered target
folders, lock files): ``$EDGEDA_BENCH_SCRATCH/NAME``, else ``/tmp/NAME``. Results never go here;
they are written under ``benchmarks/results/``.

The default stays ``/tmp`` rather than the system's temporary folder: the stored dense runs record
the path of the bundle they started from (``--init``) in their config, and the summaries pair a
stored run with the current settings by comparing configs, so the path must not depend on
``$TMPDIR``."""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Callable

DEFAULT_ROOT = "/tmp"


def scratch(name: str) -> Path:
    """The working folder ``name`` (not created)."""
    return Path(os.environ.get("EDGEDA_BENCH_SCRATCH") or DEFAULT_ROOT) / name


def copy_once(dst: Path, make_src: Callable[[], Path]) -> None:
    """Make ``dst`` a copy of the folder ``make_src()`` returns, unless it is already there. Several
    runs may ask for the same one at once: a lock beside it lets one make it while the others wait,
    and the copy appears whole (copied aside, then renamed)."""
    import fcntl

    if (dst / "manifest.json").is_file():
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(dst.with_name(dst.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (dst / "manifest.json").is_file():  # made by another run while this one waited
            return
        tmp = dst.with_name(dst.name + f".tmp{time.time_ns()}")
        shutil.copytree(make_src(), tmp)
        tmp.rename(dst)

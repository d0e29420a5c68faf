"""Built-in domains that need no download: ``syndigits`` (rendered) and ``handwritten`` (scikit-learn).

A built-in spec may name a split after a colon: ``syndigits:val``, ``handwritten:test``.
Rendered ``syndigits`` sets are cached under ``$EDGEDA_CACHE`` (default ``~/.cache/edgeda``) as
plain ``.npz`` arrays (loaded with ``allow_pickle=False``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np

from ..registry import Registry
from ..utils import atomic_path
from .domain import Domain, LoadReport
from .transforms import prepare_image

BuiltinLoader = Callable[..., Domain]
BUILTIN_DOMAINS: Registry[BuiltinLoader] = Registry("built-in domain")

DIGIT_CLASSES = [str(i) for i in range(10)]
SYNDIGITS_VERSION = 2  # bump whenever the renderer changes what a seed produces
# Seeds of the fixed syndigits splits; the training split's size is the caller's choice.
_SYN_SPLIT_SEEDS = {"train": 0, "val": 1_000_003, "test": 2_000_003}
HANDWRITTEN_ADAPT = 1000  # first 1000 of a fixed permutation: unlabeled adaptation split; rest: test


def cache_dir() -> Path:
    return Path(os.environ.get("EDGEDA_CACHE", Path.home() / ".cache" / "edgeda"))


@BUILTIN_DOMAINS.register("syndigits")
def syndigits(split: str = "train", *, size=(32, 32), channels=3, n: int | None = None, seed: int = 0) -> Domain:
    """Synthetic digits (see :mod:`edgeda.data.syndigits`); labeled, with foreground masks."""
    from . import syndigits as synth

    if split not in _SYN_SPLIT_SEEDS:
        raise ValueError(f"syndigits has splits {sorted(_SYN_SPLIT_SEEDS)}, not {split!r}")
    n = n or (10000 if split == "train" else 2000)
    render_seed = _SYN_SPLIT_SEEDS[split] + seed
    side = size[0]
    key = f"syndigits-v{SYNDIGITS_VERSION}-{split}-s{render_seed}-n{n}-{side}px-c{channels}.npz"
    path = cache_dir() / key
    arrays = None
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = z["x"], z["y"], z["m"]
        except (OSError, ValueError, KeyError, EOFError):
            arrays = None  # a damaged cache entry is re-rendered
    if arrays is None:
        arrays = synth.render(n, render_seed, side, channels)
        try:
            with atomic_path(path) as tmp:
                with open(tmp, "wb") as f:
                    np.savez(f, x=arrays[0], y=arrays[1], m=arrays[2])
        except OSError:
            pass  # caching is an optimisation only
    x, y, m = arrays
    if size[0] != size[1]:
        x = np.stack([prepare_image(i, size, channels) for i in x])
        m = np.stack([prepare_image(i[:, :, None], size, 1)[:, :, 0] for i in m])
    return Domain(f"syndigits:{split}", x, y, DIGIT_CLASSES, m, LoadReport(loaded=len(x)))


@BUILTIN_DOMAINS.register("handwritten")
def handwritten(split: str = "adapt", *, size=(32, 32), channels=3, n: int | None = None, seed: int = 0) -> Domain:
    """Real handwritten digits bundled with scikit-learn (1797 8x8 scans, resized).

    Fixed split (independent of ``seed``): ``adapt`` (1000 images, used unlabeled) and ``test``
    (797 images, labels used only for reporting); ``all`` gives every image.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    raw = np.clip(np.rint(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    order = np.random.default_rng(20240607).permutation(len(raw))
    parts = {"adapt": order[:HANDWRITTEN_ADAPT], "test": order[HANDWRITTEN_ADAPT:], "all": np.arange(len(raw))}
    if split not in parts:
        raise ValueError(f"handwritten has splits {sorted(parts)}, not {split!r}")
    idx = parts[split][:n] if n else parts[split]
    x = np.stack([prepare_image(raw[i][:, :, None], size, channels) for i in idx])
    y = digits.target[idx].astype(np.int64)
    return Domain(f"handwritten:{split}", x, y, DIGIT_CLASSES, None, LoadReport(loaded=len(x)))

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
from .synscenes import CONDITIONS as SYNSCENES_CONDITIONS
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


syndigits.splits = tuple(_SYN_SPLIT_SEEDS)
syndigits.renders_n = True  # renders as many images as asked for (``n``): a preview asks for few


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
    parts = dict(zip(handwritten.splits, (order[:HANDWRITTEN_ADAPT], order[HANDWRITTEN_ADAPT:], np.arange(len(raw)))))
    if split not in parts:
        raise ValueError(f"handwritten has splits {sorted(parts)}, not {split!r}")
    idx = parts[split][:n] if n else parts[split]
    x = np.stack([prepare_image(raw[i][:, :, None], size, channels) for i in idx])
    y = digits.target[idx].astype(np.int64)
    return Domain(f"handwritten:{split}", x, y, DIGIT_CLASSES, None, LoadReport(loaded=len(x)))


handwritten.splits = ("adapt", "test", "all")


# Dense built-in domains (segmentation masks, and depth for synscenes): rendered at the requested
# (H, W) directly and cached like syndigits. Each loader carries ``splits`` (its valid splits),
# ``dense = True`` and ``default_size`` (the recommended (H, W)).
_DIGITSCENES_SEEDS = {"train": 0, "val": 1_000_033, "test": 2_000_033}
_DIGITSCENES_N = {"train": 2000, "val": 300, "test": 300}
_HW_SCENES_SEEDS = {"adapt": 3_000_017, "test": 4_000_017, "all": 5_000_017}
_HW_SCENES_N = {"adapt": 1000, "test": 300, "all": 1000}
HW_SCENES_LOOKS = ("paper", "board", "noisy")  # digitscenes.HANDWRITTEN_LOOKS besides photo
# handwritten-scenes split -> (scans, look): each other background has an adaptation split and a test split
_HW_SCENES_SPLITS = {"adapt": ("adapt", "photo"), "test": ("test", "photo"), "all": ("all", "photo"),
                     **{f"{look}{tail}": (scans, look) for look in HW_SCENES_LOOKS
                        for tail, scans in (("", "adapt"), ("-test", "test"))}}
# synscenes split -> (look, seed, default n)
_SYNSCENES_SPLITS = {"train": ("game", 0, 1000), "val": ("game", 1_000_039, 150), "test": ("game", 2_000_039, 150),
                     "photo": ("photo", 3_000_039, 500), "photo-test": ("photo", 4_000_039, 150)}
# conditions of the photo look (fog, night, ...): the photo splits' seeds, so fog, night, rain show the same
# worlds as ``photo`` / ``photo-test`` and the camera conditions the same worlds through another camera
_SYNSCENES_SPLITS.update({f"{c}{tail}": (c, seed, n) for c in SYNSCENES_CONDITIONS
                          for tail, seed, n in (("", 3_000_039, 500), ("-test", 4_000_039, 150))})


def _check_split(name: str, split: str, valid) -> None:
    if split not in valid:
        raise ValueError(f"{name} has splits {', '.join(valid)}, not {split!r}")


def _cached_dense(key: str, render: Callable[[], dict], shapes: dict) -> dict:
    """Arrays rendered by ``render()`` (a dict of name -> array), cached under ``cache_dir()`` as one
    ``.npy`` file per array in a folder named by ``key`` (without ``.npz``) and memory-mapped copy-on-write:
    pages are read when used, so a run that never touches an array (depth in a segmentation run, the
    masks of an unlabeled split) never loads it. A ``key`` ``.npz`` written by earlier versions is
    converted once; a cache entry that cannot be read or holds other shapes is rendered again."""
    import zipfile

    folder = cache_dir() / key.removesuffix(".npz")
    try:
        arrays = {k: np.load(folder / f"{k}.npy", mmap_mode="c", allow_pickle=False) for k in shapes}
        if all(arrays[k].shape == s for k, s in shapes.items()):
            return arrays
    except (OSError, ValueError, EOFError):
        pass  # absent or damaged: read the older archive or render
    arrays = None
    old = cache_dir() / key
    if old.exists():
        try:
            with np.load(old, allow_pickle=False) as z:
                arrays = {k: z[k] for k in shapes}
            if not all(arrays[k].shape == s for k, s in shapes.items()):
                arrays = None
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            arrays = None  # a damaged cache entry is re-rendered
    if arrays is None:
        arrays = render()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for k, a in arrays.items():
            with atomic_path(folder / f"{k}.npy") as tmp:
                with open(tmp, "wb") as f:
                    np.save(f, np.ascontiguousarray(a), allow_pickle=False)
        return {k: np.load(folder / f"{k}.npy", mmap_mode="c", allow_pickle=False) for k in shapes}
    except OSError:
        return arrays  # caching is an optimisation only


def _dense_size(size) -> tuple[int, int]:
    h, w = (int(v) for v in size)
    if h < 8 or w < 8:
        raise ValueError(f"dense built-in domains need images of at least 8x8 pixels, not {h}x{w}")
    return h, w


@BUILTIN_DOMAINS.register("digitscenes")
def digitscenes(split: str = "train", *, size=(64, 64), channels=3, n: int | None = None, seed: int = 0):
    """Synthetic digit scenes for segmentation (see :mod:`edgeda.data.digitscenes`): 2-5 rendered
    digits on procedural backgrounds; classes background, 0-9. Splits ``train`` (2000 images by
    default), ``val`` and ``test`` (300 each). Recommended size 64x64; any (H, W) is rendered as given."""
    from . import digitscenes as ds
    from .dense import ArrayDenseDomain

    _check_split("digitscenes", split, digitscenes.splits)
    h, w = _dense_size(size)
    n = n or _DIGITSCENES_N[split]
    render_seed = _DIGITSCENES_SEEDS[split] + seed
    key = f"digitscenes-v{ds.DIGITSCENES_VERSION}-{split}-s{render_seed}-n{n}-{h}x{w}-c{channels}.npz"
    arrays = _cached_dense(key, lambda: dict(zip("xm", ds.render(n, render_seed, (h, w), channels))),
                           {"x": (n, h, w, channels), "m": (n, h, w)})
    return ArrayDenseDomain(f"digitscenes:{split}", arrays["x"], arrays["m"], classes=ds.SCENE_CLASSES,
                            palette=ds.scene_palette())


digitscenes.splits = ("train", "val", "test")
digitscenes.dense = True
digitscenes.default_size = (64, 64)


@BUILTIN_DOMAINS.register("handwritten-scenes")
def handwritten_scenes(split: str = "adapt", *, size=(64, 64), channels=3, n: int | None = None, seed: int = 0):
    """Real handwritten digits (scikit-learn's scans) placed on crops of real photographs; classes
    background, 0-9 (see :mod:`edgeda.data.digitscenes`). ``adapt`` (1000 images by default, for
    unlabeled use; its masks are only for reporting) and ``test`` (300) draw from disjoint scans,
    fixed independently of ``seed`` (``edgeda.data.digitscenes.scan_indices``); ``all`` uses every
    scan. ``seed`` only changes the layout. The domain's ``scan_ids`` (N, 5) lists the scans in
    each image (-1 = none). Recommended size 64x64. Other backgrounds, each an adaptation split
    (the ``adapt`` scans) and a labelled ``-test`` split (the ``test`` scans): ``paper`` / ``paper-test``
    (ruled or squared paper, pen ink), ``board`` / ``board-test`` (a chalkboard, chalk) and ``noisy`` /
    ``noisy-test`` (the photo scenes of ``adapt`` / ``test``, same masks, in low light with JPEG)."""
    from . import digitscenes as ds
    from .dense import ArrayDenseDomain

    _check_split("handwritten-scenes", split, handwritten_scenes.splits)
    h, w = _dense_size(size)
    scans, look = _HW_SCENES_SPLITS[split]
    n = n or _HW_SCENES_N[scans]
    render_seed = _HW_SCENES_SEEDS[scans] + seed
    key = f"handwritten-scenes-v{ds.HANDWRITTEN_SCENES_VERSION}-{split}-s{render_seed}-n{n}-{h}x{w}-c{channels}.npz"
    arrays = _cached_dense(key, lambda: dict(zip("xms", ds.render_handwritten(n, render_seed, scans, (h, w), channels,
                                                                              look=look))),
                           {"x": (n, h, w, channels), "m": (n, h, w), "s": (n, 5)})
    dom = ArrayDenseDomain(f"handwritten-scenes:{split}", arrays["x"], arrays["m"], classes=ds.SCENE_CLASSES,
                           palette=ds.scene_palette())
    dom.scan_ids = arrays["s"]
    return dom


handwritten_scenes.splits = tuple(_HW_SCENES_SPLITS)
handwritten_scenes.dense = True
handwritten_scenes.default_size = (64, 64)


@BUILTIN_DOMAINS.register("synscenes")
def synscenes(split: str = "train", *, size=(128, 256), channels=3, n: int | None = None, seed: int = 0):
    """Procedural street scenes with the 19 Cityscapes classes and metric depth (see
    :mod:`edgeda.data.synscenes`). Game look: ``train`` (1000 images by default), ``val``, ``test``
    (150 each); photo look, a controlled synthetic shift in appearance and layout: ``photo`` (500,
    the unlabeled adaptation split; masks and depth only for reporting) and ``photo-test`` (150).
    Conditions of the photo look (``fog``, ``night``, ``rain``, ``high-cam``, ``wide``, ``suburb``; see
    the module), each with an adaptation split ``NAME`` (500) and a test split ``NAME-test`` (150)
    rendered from the photo splits' seeds. Recommended size 128x256 (H x W) on a CPU; any (H, W) is
    rendered as given."""
    from . import synscenes as ss
    from .dense import ArrayDenseDomain

    _check_split("synscenes", split, synscenes.splits)
    h, w = _dense_size(size)
    look, base_seed, default_n = _SYNSCENES_SPLITS[split]
    n = n or default_n
    render_seed = base_seed + seed
    key = f"synscenes-v{ss.SYNSCENES_VERSION}-{split}-s{render_seed}-n{n}-{h}x{w}-c{channels}.npz"
    arrays = _cached_dense(key, lambda: dict(zip("xmd", ss.render(n, render_seed, (h, w), look, channels))),
                           {"x": (n, h, w, channels), "m": (n, h, w), "d": (n, h, w)})
    return ArrayDenseDomain(f"synscenes:{split}", arrays["x"], arrays["m"], arrays["d"], classes=ss.CLASSES,
                            palette=ss.PALETTE)


synscenes.splits = tuple(_SYNSCENES_SPLITS)
synscenes.dense = True
synscenes.default_size = (128, 256)

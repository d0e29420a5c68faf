"""Resolve a domain spec string: a built-in name (optionally ``name:split``), a folder, or an ``.npz``."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError
from ..registry import Registry
from .builtin import BUILTIN_DOMAINS
from .domain import Domain
from .files import load_folder, load_npz

# Loaders of the tasks whose data is neither one label per image nor per-pixel labels, by task name:
# ``load_domain(spec, task=name)`` hands the spec to it (same keyword arguments as ``load_domain``).
TASK_DOMAIN_LOADERS: Registry = Registry("task data loader")


@dataclass(frozen=True)
class DomainSpec:
    """A domain spec string, parsed once: a built-in domain (``name`` and an optional ``split``,
    from ``"name:split"``), or user data at ``text`` (a folder or an ``.npz``)."""
    text: str
    name: str | None = None  # the built-in domain's name; None for user data
    split: str | None = None  # the built-in split the spec names, if any

    @classmethod
    def parse(cls, text: str) -> "DomainSpec":
        name, _, split = text.partition(":")
        return cls(text, name, split or None) if name in BUILTIN_DOMAINS else cls(text)

    @property
    def builtin(self) -> bool:
        return self.name is not None

    @property
    def loader(self):
        """The built-in domain's loader (None for user data); its attributes describe the domain
        (``splits``, ``dense``, ``default_size``, ``renders_n``)."""
        return BUILTIN_DOMAINS.get(self.name) if self.builtin else None

    @property
    def splits(self) -> tuple[str, ...]:
        """The split names the built-in domain accepts (none for user data)."""
        return tuple(getattr(self.loader, "splits", ()))

    def has_split(self, split: str) -> bool:
        return split in self.splits

    def with_split(self, split: str) -> "DomainSpec":
        return DomainSpec(f"{self.name}:{split}", self.name, split)


def is_dense_spec(spec: str) -> bool:
    """Whether ``spec`` names dense data (per-pixel labels), decided without loading it."""
    parsed = DomainSpec.parse(spec)
    if parsed.builtin:
        return bool(getattr(parsed.loader, "dense", False))
    from .dense_files import is_dense_folder, npz_is_dense

    path = Path(spec).expanduser()
    if path.suffix.lower() == ".npz":
        return path.is_file() and npz_is_dense(path)
    if path.suffix.lower() == ".json":  # COCO: dense only as --task segmentation reads it
        return False
    return path.is_dir() and is_dense_folder(path)


def default_size(spec: str) -> tuple[int, int] | None:
    """The input size a built-in domain is made for (None for user data)."""
    size = getattr(DomainSpec.parse(spec).loader, "default_size", None)
    return tuple(size) if size else None


def load_domain(
    spec: str,
    *,
    labeled: bool,
    size: tuple[int, int] = (32, 32),
    channels: int = 3,
    split: str | None = None,
    n: int | None = None,
    seed: int = 0,
    task: str | None = None,
) -> Domain:
    """Load a domain at the task's image size and channel count.

    ``split`` is the default split of a built-in domain when the spec names none. ``n`` caps the
    number of samples of a built-in domain (for rendered ones it is the number rendered). Dense
    data (a folder with ``images/``, an ``.npz`` with per-pixel ``y`` or ``depth``, a dense
    built-in) gives a :class:`~edgeda.data.dense.DenseDomain`, read at its stored size.

    ``task``: a task whose data has its own loader in :data:`TASK_DOMAIN_LOADERS` reads the spec
    with it -- for ``detection`` a :class:`~edgeda.data.detection.DetectionDomain` (the built-in
    scenes with boxes, COCO, YOLO, Pascal VOC, or an image folder as unlabeled data). A COCO ``.json``
    with ``task`` ``segmentation`` is its instance masks drawn as classes (:mod:`edgeda.data.coco_masks`).
    """
    if task is not None and task in TASK_DOMAIN_LOADERS:
        return TASK_DOMAIN_LOADERS.get(task)(spec, labeled=labeled, size=size, channels=channels, split=split, n=n,
                                             seed=seed)
    parsed = DomainSpec.parse(spec)
    if parsed.builtin:
        kwargs = {"size": tuple(size), "channels": channels, "n": n, "seed": seed}
        chosen = parsed.split or split
        try:
            return parsed.loader(chosen, **kwargs) if chosen else parsed.loader(**kwargs)
        except ValueError as e:
            raise DataError(str(e)) from None
    path = Path(spec).expanduser()
    if path.suffix.lower() == ".json":
        if task != "segmentation" or not path.is_file():
            raise DataError(f"{spec}: a COCO .json is read with --task detection (its boxes) or --task segmentation "
                            "(its instance masks drawn as classes)" if path.is_file() else f"{spec}: no such file")
        from .coco_masks import load_coco_masks

        return load_coco_masks(path, labeled=labeled)
    if path.suffix.lower() == ".npz":
        if not path.is_file():
            raise DataError(f"{spec}: no such .npz file")
        if is_dense_spec(spec):
            from .dense_files import load_dense_npz

            return load_dense_npz(path, labeled=labeled)
        return load_npz(path, labeled=labeled, size=tuple(size), channels=channels)
    if path.is_dir():
        if is_dense_spec(spec):
            from .dense_files import load_dense_folder

            return load_dense_folder(path, labeled=labeled)
        return load_folder(path, labeled=labeled, size=tuple(size), channels=channels)
    valid = ", ".join(BUILTIN_DOMAINS)
    raise DataError(f"unknown domain {spec!r}: not a built-in name ({valid}), a folder, or an .npz file")


def save_images(domain, folder: Path) -> int:
    """Write ``domain``'s images (a plain domain's, a dense or detection domain's frames) as numbered PNG
    files in ``folder``, in order; the number written. What ``edgeda adapt --target-dir`` reads."""
    import numpy as np
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(len(domain)):
        a = np.asarray(domain.sample(i).image if hasattr(domain, "sample") else domain.images[i])
        Image.fromarray(a[..., 0] if a.ndim == 3 and a.shape[2] == 1 else a).save(folder / f"{i:05d}.png")
    return len(domain)

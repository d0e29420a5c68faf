"""The domains of a training run, loaded and checked before any training starts."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import TrainConfig
from ..data import Domain, load_domain, split_builtin
from ..errors import DataError


@dataclass
class Domains:
    source: Domain
    source_val: Domain
    target: Domain | None
    target_test: Domain | None

    def summary(self) -> dict:
        d = {"source": self.source.name, "source_n": len(self.source), "source_val_n": len(self.source_val)}
        for k in ("target", "target_test"):
            dom = getattr(self, k)
            if dom is not None:
                d[k], d[f"{k}_n"] = dom.name, len(dom)
                if dom.report.skipped:
                    d[f"{k}_skipped"] = len(dom.report.skipped)
        if self.source.report.skipped:
            d["source_skipped"] = len(self.source.report.skipped)
        return d


def load_domains(cfg: TrainConfig, needs_target: bool) -> Domains:
    """Load and check every domain before any training starts (one clear error otherwise)."""
    size = (cfg.image_size, cfg.image_size)
    kw = {"size": size, "channels": cfg.channels, "seed": cfg.seed}
    src_builtin = split_builtin(cfg.source)
    source = load_domain(cfg.source, labeled=True, split="train", n=cfg.source_n, **kw)
    source.require_usable(labeled=True)
    if src_builtin and src_builtin[1] is None and _has_split(src_builtin[0], "val"):
        val_n = max(200, min(2000, cfg.source_n // 5))
        source_val = load_domain(f"{src_builtin[0]}:val", labeled=True, n=val_n, **kw)
    else:
        order = np.random.default_rng(cfg.seed).permutation(len(source))
        n_val = max(1, int(round(cfg.val_fraction * len(source))))
        if len(source) < 2:
            raise DataError(f"source domain {source.name!r} needs at least 2 images (train + validation)")
        source_val = source.subset(order[:n_val], f"{source.name} (val)")
        source = source.subset(order[n_val:])
    num_classes = source.num_classes or int(source.labels.max()) + 1
    source.require_usable(labeled=True, num_classes=num_classes)

    target = target_test = None
    if cfg.target:
        target = load_domain(cfg.target, labeled=False, split="adapt" if _has_split(cfg.target, "adapt") else None, **kw)
        if needs_target:
            target.require_usable(labeled=False)
    test_spec = cfg.target_test
    if test_spec is None and cfg.target:
        tb = split_builtin(cfg.target)
        if tb and tb[1] is None and _has_split(tb[0], "test"):
            test_spec = f"{tb[0]}:test"
    if test_spec:
        target_test = load_domain(test_spec, labeled=True, **kw)
        target_test.require_usable(labeled=True, num_classes=num_classes)
        if source.classes and target_test.classes and source.classes != target_test.classes:
            raise DataError(
                f"classes differ between source ({', '.join(source.classes)}) and target test "
                f"({', '.join(target_test.classes)}); use the same class folders in both"
            )
    elif needs_target and target is None:
        raise DataError(f"method {cfg.method!r} needs a target domain (--target)")
    return Domains(source, source_val, target, target_test)


def _has_split(spec: str, split: str) -> bool:
    b = split_builtin(spec)
    if not b:
        return False
    return split in {"syndigits": ("train", "val", "test"), "handwritten": ("adapt", "test", "all")}.get(b[0], ())

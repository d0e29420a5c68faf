"""Labelled data read with a model's class list, matched by class name.

Real test sets rarely name exactly the classes a synthetic source has: a COCO validation json has 80
categories where a rendered source has 6, a Cityscapes-style set 19 where SYNTHIA has 16. Where both
name their classes and share at least one name, :func:`align_classes` reads the data with the
model's classes: its labels renumbered to the model's order by name, and what belongs to classes the
model does not have left out of the scores -- images of those classes (classification), their pixels
(segmentation: ignore, 255), their boxes (detection). Model classes the data never names simply
have no examples. The returned message says which classes were dropped and which are absent.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ..errors import DataError
from .dense import IGNORE_INDEX, DenseDomain, DenseSample
from .detection import DetectionDomain, DetectionSample
from .domain import Domain


def class_index(have: list[str], want: list[str]) -> np.ndarray:
    """(len(have),) int64: each of ``have``'s classes' index in ``want`` by name, -1 where ``want`` lacks it."""
    pos = {n: k for k, n in enumerate(want)}
    return np.array([pos.get(n, -1) for n in have], np.int64)


def names_classes(dom) -> bool:
    """Whether ``dom``'s class names are names, not made up from its largest label id."""
    return bool(dom.classes) and not getattr(dom, "classes_from_ids", False)


def reads_by_name(dom, classes: list[str], *, any_shared: bool) -> bool:
    """Whether labelled ``dom`` is read with a model's ``classes`` by name (:func:`align_classes`): it names
    its classes, the two lists differ and share a name, and -- unless ``any_shared`` (dense and detection
    tasks, whose test sets name other classes as a rule) -- one list holds every name of the other
    (classification: folders of some of the model's classes, or the same classes in another order, or a
    model of some of the data's). Two lists that each hold names the other lacks are more often a typo;
    the task's check refuses them."""
    if not (names_classes(dom) and classes) or list(dom.classes) == list(classes):
        return False
    have, want = set(dom.classes), set(classes)
    return bool(have & want) and (any_shared or have <= want or want <= have)


def align_classes(domain, classes: list[str], what: str):
    """(``domain`` read with ``classes``, a one-line message, also added to its load report's warnings) --
    the domain itself and None when its classes are already ``classes``; :class:`DataError` (naming the
    data as ``what``) when the two share no class name."""
    have = list(domain.classes or [])
    want = list(classes)
    if have == want:
        return domain, None
    idx = class_index(have, want)
    if not (idx >= 0).any():
        raise DataError(f"{what} names the classes {', '.join(have)}; the model knows {', '.join(want)}: "
                        "no class in common")
    dropped = [n for n, k in zip(have, idx) if k < 0]
    absent = [n for n in want if n not in have]
    if isinstance(domain, Domain):
        out = _classification(domain, idx, want)
    elif isinstance(domain, DenseDomain):
        out = _Renamed(domain, idx, want)
    elif isinstance(domain, DetectionDomain):
        out = _RenamedBoxes(domain, idx, want)
    else:
        raise DataError(f"{what}: cannot read {type(domain).__name__} with another class list")
    parts = [f"read with the model's {len(want)} classes by name"]
    if dropped:
        parts.append(f"its classes {_names(dropped)} are left out of the scores")
    if absent:
        parts.append(f"the model's {_names(absent)} have no examples in it")
    message = "; ".join(parts)
    out.report.warn(message)
    return out, message


def _names(names: list[str], shown: int = 6) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def _classification(dom: Domain, idx: np.ndarray, want: list[str]) -> Domain:
    labels = idx[dom.labels] if dom.labels is not None else None
    keep = labels >= 0 if labels is not None else np.ones(len(dom), bool)
    fg = dom.foreground[keep] if dom.foreground is not None else None
    report = dataclasses.replace(dom.report, skipped=list(dom.report.skipped), warnings=list(dom.report.warnings))
    return dataclasses.replace(dom, images=dom.images[keep], labels=None if labels is None else labels[keep],
                               classes=want, foreground=fg, report=report)


class _Renamed(DenseDomain):
    """A dense domain's masks with class ids renumbered through a lookup table (others: ignore)."""

    def __init__(self, base: DenseDomain, idx: np.ndarray, want: list[str]):
        super().__init__(base.name, classes=want, palette=None, has_masks=base.has_masks, has_depth=base.has_depth,
                         report=dataclasses.replace(base.report, warnings=list(base.report.warnings)))
        self.base = base
        self.lut = np.full(256, IGNORE_INDEX, np.uint8)
        self.lut[np.flatnonzero(idx >= 0)] = idx[idx >= 0]

    def __len__(self) -> int:
        return len(self.base)

    def sample(self, i: int) -> DenseSample:
        s = self.base.sample(i)
        return DenseSample(s.image, None if s.mask is None else self.lut[s.mask], s.depth)


class _RenamedBoxes(DetectionDomain):
    """A detection domain's boxes with class ids renumbered (boxes of other classes left out)."""

    def __init__(self, base: DetectionDomain, idx: np.ndarray, want: list[str]):
        super().__init__(base.name, classes=want, has_boxes=base.has_boxes,
                         report=dataclasses.replace(base.report, warnings=list(base.report.warnings)))
        self.base, self.idx = base, idx
        ids = base.category_ids
        inverse = {int(k): j for j, k in enumerate(idx) if k >= 0}
        if ids is not None and len(inverse) == len(want):  # the json's own id of each model class
            self.category_ids = [ids[inverse[k]] for k in range(len(want))]

    def __len__(self) -> int:
        return len(self.base)

    def sample(self, i: int) -> DetectionSample:
        s = self.base.sample(i)
        lab, keep = self._map(s.labels)
        clab, ckeep = self._map(s.crowd_labels)
        return DetectionSample(s.image, s.boxes[keep], lab, s.crowd[ckeep], clab)

    def _map(self, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        new = self.idx[labels] if len(labels) else labels
        keep = new >= 0
        return new[keep].astype(np.int64), keep

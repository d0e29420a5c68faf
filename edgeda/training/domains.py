"""The domains of a training run, loaded and checked before any training starts.

Also resolves what the data decides: the task (classification for one label per image; for
dense data segmentation or depth, from what the source carries) and the input size (given, else
the built-in source's own size, else the task's default).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import TrainConfig
from ..data import Domain, load_domain
from ..data.align import align_classes, names_classes, reads_by_name
from ..data.detection_spec import looks_like_detection_data
from ..data.spec import DomainSpec, default_size, is_dense_spec
from ..errors import DataError
from ..tasks import TASKS, Task, task_of


@dataclass
class Domains:
    source: Domain
    source_val: Domain
    target: Domain | None
    target_test: Domain | None
    task: str = "classification"
    image_size: tuple[int, int] = (32, 32)

    def summary(self) -> dict:
        """What the manifest records: names, sizes, and every domain's skipped files with the reason."""
        d = {"source": self.source.name, "source_n": len(self.source), "source_val_n": len(self.source_val)}
        for k in ("target", "target_test"):
            dom = getattr(self, k)
            if dom is not None:
                d[k], d[f"{k}_n"] = dom.name, len(dom)
        for k, dom in self.loaded():
            if dom.report.skipped:
                rep = dom.report.to_dict()
                d[f"{k}_skipped"], d[f"{k}_skipped_files"] = rep["skipped"], rep["skipped_files"]
            if dom.report.warnings:
                d[f"{k}_warnings"] = list(dom.report.warnings)
        return d

    def loaded(self):
        """(role, domain) of each domain loaded from its own spec (the source's validation part shares
        the source's files and report)."""
        return [(k, getattr(self, k)) for k in ("source", "target", "target_test") if getattr(self, k) is not None]

    def skip_lines(self, listed: int = 5) -> list[str]:
        """Per domain with skipped files: the count and the first ``listed`` with the reason (what
        training prints before it starts, as ``edgeda data preview`` does)."""
        lines = []
        for k, dom in self.loaded():
            skipped = dom.report.skipped
            lines += [f"warning: {k.replace('_', ' ')} {dom.name}: {w}" for w in dom.report.warnings]
            if not skipped:
                continue
            lines.append(f"{k.replace('_', ' ')} {dom.name}: {dom.report.summary()} (listed in the manifest):")
            lines += [f"  {p}: {reason}" for p, reason in skipped[:listed]]
            if len(skipped) > listed:
                lines.append(f"  ... {len(skipped) - listed} more")
        return lines


def resolve_task(cfg: TrainConfig, source) -> str:
    """The task the source data supports (``cfg.task`` when given, checked against the data)."""
    if isinstance(source, Domain):
        if cfg.task is not None and not task_of(cfg.task).reads(source):
            raise DataError(f"--task {cfg.task} needs per-pixel labels, but {source.name!r} has one label per image "
                            "(a dense folder has images/ with masks/ or depth/)")
        return "classification"

    if cfg.task is not None:
        if not task_of(cfg.task).labeled_by(source):
            kinds = [t for t in TASKS if task_of(t).labeled_by(source)]
            label_names = {"mask": "segmentation masks", "depth": "depth maps", "boxes": "boxes"}

            def labels_of(t):
                return label_names.get(task_of(t).label_key, f"{task_of(t).label_key} labels")

            have = " and ".join(labels_of(t) for t in kinds) or "no labels"
            need = {"segmentation": "masks/ beside images/ (PNG class ids), or an .npz with 'y' (N, H, W)",
                    "depth": "depth/ beside images/ (16-bit PNG millimetres or .npy metres), or an .npz with 'depth' (N, H, W)"}
            needs = f" (a folder needs {need[cfg.task]})" if cfg.task in need else ""
            other = f"; train it with --task {kinds[0]}" if kinds else ""
            raise DataError(f"--task {cfg.task}: the source {source.name!r} has {have}, no {labels_of(cfg.task)}"
                            f"{needs}{other}")
        return cfg.task
    kinds = [t for t in TASKS if task_of(t).inferred and task_of(t).labeled_by(source)]
    if len(kinds) == 1:
        return kinds[0]
    if not kinds:
        raise DataError(f"the source {source.name!r} has neither masks nor depth maps; a labeled dense source needs one")
    raise DataError(f"the source {source.name!r} has both masks and depth: pass --task segmentation or --task depth")


def resolve_size(cfg: TrainConfig) -> tuple[int, int]:
    if cfg.image_size is not None:
        s = cfg.image_size
        return (s, s) if isinstance(s, int) else (int(s[0]), int(s[1]))
    own = default_size(cfg.source)
    if own is not None:
        return own
    if cfg.task is not None:
        return task_of(cfg.task).default_size
    return task_of("segmentation" if is_dense_spec(cfg.source) else "classification").default_size


#: The target a built-in source is paired with when ``--target`` is not given.
DEFAULT_TARGETS = {"syndigits": "handwritten"}


def load_domains(cfg: TrainConfig, needs_target: bool) -> Domains:
    """Load and check every domain before any training starts (one clear error otherwise). Box
    annotations (a COCO json, a YOLO, Pascal VOC or KITTI folder) given without ``--task`` are read as
    detection data (set in ``cfg.task``, so the run's config records it), said in the source's warnings."""
    inferred = cfg.task is None and looks_like_detection_data(cfg.source)  # else its folders are read as classes
    if inferred:
        cfg.task = "detection"
    size = resolve_size(cfg)
    kw = {"size": size, "channels": cfg.channels, "seed": cfg.seed, "task": cfg.task}
    src = DomainSpec.parse(cfg.source)
    source = load_domain(cfg.source, labeled=True, split="train", n=cfg.source_n, **kw)
    if inferred:
        json = " (--task segmentation reads a COCO json's instance masks)" if source.category_ids is not None else ""
        source.report.warn(f"box annotations: training a detector (--task detection){json}")
    task = resolve_task(cfg, source)

    tk = task_of(task)
    in_memory = isinstance(source, Domain)  # per-image data (classification), else read per sample
    source.require_usable(labels=tk.label_kind)
    source = _only_classes(source, cfg, f"the source {cfg.source}")
    if src.builtin and src.split is None and src.has_split("val"):
        val_n = None if cfg.source_n is None or not in_memory else max(200, min(2000, cfg.source_n // 5))
        source_val = _only_classes(load_domain(src.with_split("val").text, labeled=True, n=val_n, **kw), cfg,
                                   "the source's validation split")
    else:
        if len(source) < 2:
            raise DataError(f"source domain {source.name!r} needs at least 2 images (train + validation)")
        order = np.random.default_rng(cfg.seed).permutation(len(source))
        n_val = max(1, int(round(cfg.val_fraction * len(source))))
        source_val = source.subset(order[:n_val], f"{source.name} (val)")
        source = source.subset(order[n_val:])
    num_classes = tk.num_classes_of(source)
    if in_memory:
        source.require_usable(labels=tk.label_kind, num_classes=num_classes)

    target = target_test = None
    if cfg.target is None:  # only the built-in pair has a default target; recorded in the run's config
        cfg.target = DEFAULT_TARGETS.get(src.name)
    if cfg.target:
        target = load_domain(cfg.target, labeled=False, split="adapt" if DomainSpec.parse(cfg.target).has_split("adapt")
                             else None, **kw)
        target = tk.image_domain(target)
        _same_kind(target, "target", tk)
        if needs_target:
            target.require_usable()
    if needs_target and target is None:
        raise DataError(f"method {cfg.method!r} adapts to a target domain: give --target (unlabeled images of the "
                        f"domain to adapt to), or use --method source_only")
    test_spec = cfg.target_test
    if test_spec is None and cfg.target:
        test_spec = _default_test_split(cfg.target)
    if test_spec:
        target_test = load_domain(test_spec, labeled=True, **kw)
        _same_kind(target_test, "target test", tk)
        if source.classes and target_test.classes and source.classes != target_test.classes:
            # scored on the classes both name (classification: where one list holds all of the other's)
            if names_classes(source) and reads_by_name(target_test, source.classes, any_shared=tk.aligns_classes):
                target_test, _ = align_classes(target_test, source.classes, f"the target test {test_spec}")
            else:
                raise DataError(
                    f"classes differ between source ({', '.join(source.classes)}) and target test "
                    f"({', '.join(target_test.classes)}); use the same class list in both"
                )
        target_test.require_usable(labels=tk.label_kind, num_classes=num_classes)
    return Domains(source, source_val, target, target_test, task, size)


def _only_classes(dom, cfg: TrainConfig, what: str):
    """``dom`` read with ``cfg.classes`` only (all of its classes when None); a clear error for a name it lacks."""
    if not cfg.classes:
        return dom
    missing = [c for c in cfg.classes if c not in (dom.classes or [])]
    if missing:
        raise DataError(f"--classes {','.join(missing)}: {what} has no such class (its classes: "
                        f"{', '.join(dom.classes or []) or 'none named'})")
    return align_classes(dom, cfg.classes, what)[0]


def _same_kind(dom, what: str, task: Task) -> None:
    if not task.reads(dom):
        per_image = isinstance(dom, Domain)
        raise DataError(f"the {what} {dom.name!r} is {'classification' if per_image else 'dense'} data but the source "
                        f"is {'dense' if per_image else 'classification'} data (give --target / --target-test of the same kind)")


def _default_test_split(target: str) -> str | None:
    """``name`` -> ``name:test``; ``name:look`` -> ``name:look-test`` where the built-in has it."""
    tb = DomainSpec.parse(target)
    if not tb.builtin:
        return None
    want = "test" if tb.split in (None, "adapt") else f"{tb.split}-test"
    return tb.with_split(want).text if tb.has_split(want) else None

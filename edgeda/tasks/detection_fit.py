"""Whether a detector can learn the source's boxes at the run's input size, told before training.

A detector learns a box as its paper intends only when its target assignment makes a positive for
it: SSD when some default box overlaps it at IoU >= 0.5 (the others get one forced match, from a
default box that may overlap them by 0.02), FCOS when some location lies inside it, near its centre,
on the level of its size (the others get nothing). Boxes smaller than a detector's smallest default
box or its first stride are common: street scenes at a few hundred pixels, small parts, far
objects. A run on such data trains for its whole budget and scores a few mAP points even on its own
training domain; this check says so in a second, from the source's boxes only (no target labels),
at the size the evaluation sees them (the plain resize to the input).

:func:`box_coverage` measures it (``detection.assigned``: the share of boxes assigned); the training
run records it in its manifest and warns below :data:`WARN_BELOW`, naming what would reach more of
them (the other detector family, a larger input) with the share each would assign.
"""
from __future__ import annotations

import numpy as np
import torch

from ..data.detection_transforms import DetectionDataset

WARN_BELOW = 0.9  # warn when the detector assigns fewer of the source's boxes than this
MAX_IMAGES = 256  # source images the check reads (evenly spread over the source)
# the other family a warning measures, at the smallest build (anchors and locations depend only on the input size)
_ALTERNATIVES = {"ssdlite": ("fcos", {"backbone": "mobilenet_v3_large", "width": 0.25, "fpn_channels": 64,
                                      "num_convs": 0}),
                 "fcos": ("ssdlite", {"width": 0.25})}


def source_boxes(domain, size: tuple[int, int], channels: int, max_images: int = MAX_IMAGES) -> list[torch.Tensor]:
    """Per image, ``(n, 4)`` boxes of up to ``max_images`` images of ``domain`` (evenly spread), in
    pixels of the ``size`` input as evaluation resizes them."""
    n = len(domain)
    if n == 0:
        return []
    ds = DetectionDataset(domain, size, channels, train=False, labels=True)
    picks = np.unique(np.linspace(0, n - 1, min(n, max_images)).round().astype(int))
    return [torch.as_tensor(ds[int(i)]["sample"].boxes, dtype=torch.float32).reshape(-1, 4) for i in picks]


def box_coverage(model, boxes: list[torch.Tensor], size: tuple[int, int], scale: float = 1.0) -> float | None:
    """The share of the boxes (per image, pixels of a ``size`` input, times ``scale``) that ``model``'s
    target assignment reaches, image by image as training assigns them
    (:meth:`~edgeda.models.detection.base.Detector.assigned`); None without boxes."""
    with torch.no_grad():
        hits = [model.assigned(b * scale, size) for b in boxes if len(b)]
    return float(torch.cat(hits).float().mean()) if hits else None


def _alternative(arch: str, num_classes: int, channels: int, size):
    from ..models import build

    other, kwargs = _ALTERNATIVES[arch]
    return other, build("detector", arch=other, num_classes=num_classes, channels=channels, image_size=list(size),
                        **kwargs)


def fit_report(model, domain, spec) -> tuple[dict, list[str]]:
    """(the record the run's manifest keeps, warning lines) for ``model`` on the source ``domain``."""
    size = (int(spec.image_size[0]), int(spec.image_size[1]))
    per_image = source_boxes(domain, size, spec.channels)
    share = box_coverage(model, per_image, size)
    if share is None:
        return {}, []
    boxes = torch.cat(per_image)
    wh = boxes[:, 2:] - boxes[:, :2]
    short = wh.min(dim=1).values
    rec = {"boxes": int(len(boxes)), "assigned": round(share, 4), "arch": model.arch, "image_size": list(size),
           "median_box_wh": [round(float(v), 1) for v in wh.median(dim=0).values],
           "short_side_under_8px": round(float((short < 8).float().mean()), 4)}
    if share >= WARN_BELOW:
        return rec, []
    hints = []
    if model.arch in _ALTERNATIVES:
        other, alt = _alternative(model.arch, spec.num_classes or 1, spec.channels, size)
        rec[f"assigned_{other}"] = round(box_coverage(alt, per_image, size), 4)
        if rec[f"assigned_{other}"] > share:
            hints.append(f"--backbone {other} assigns {100 * rec[f'assigned_{other}']:.0f} %")
    big = (2 * size[0], 2 * size[1])
    rec["assigned_at_2x"] = round(box_coverage(model, per_image, big, scale=2.0), 4)
    if rec["assigned_at_2x"] > share:
        hints.append(f"--image-size {big[0]},{big[1]} assigns {100 * rec['assigned_at_2x']:.0f} %")
    hints = hints or ["neither the other detector family nor a 2x input assigns more"]
    rule = ("overlap no default box by IoU 0.5 and get only one forced match" if model.arch == "ssdlite"
            else "have no location assigned and are never learned")
    line = (f"{model.arch} can learn {100 * share:.0f} % of the source's boxes at {size[0]}x{size[1]} "
            f"({len(boxes)} boxes, median {rec['median_box_wh'][0]:.0f}x{rec['median_box_wh'][1]:.0f} px, "
            f"{100 * rec['short_side_under_8px']:.0f} % under 8 px on the short side): the rest {rule}; "
            + "; ".join(hints))
    return rec, [line]

"""Batches of box-labelled images: the resumable training stream and the evaluation pass.

Detection samples carry any number of boxes, so a batch is (images (N, C, H, W), one target
record per image) instead of stacked label tensors. The order, resumption and per-sample
augmentation seeding are :class:`~edgeda.training.dense_stream.DenseStream`'s; the samples come
from :class:`~edgeda.data.detection_transforms.DetectionDataset` (a random scale-crop and flip
that move the boxes with the pixels, for training; a plain resize for evaluation) and are batched
by :func:`~edgeda.data.detection.collate_items`.
"""
from __future__ import annotations

import functools
from typing import Iterator

import numpy as np
import torch

from ..data.detection import ArrayDetectionDomain, collate_items
from ..data.detection_transforms import DetectionDataset
from ..methods.base import Batch
from ..utils import to_device
from .dense_stream import DenseStream


def _workers(domain, workers):
    """No workers for in-memory domains; a few for data decoded from disk (as dense streams)."""
    if workers is not None:
        return workers
    import os

    return 0 if isinstance(domain, ArrayDetectionDomain) else max(1, min(4, (os.cpu_count() or 2) - 1))


class DetectionStream(DenseStream):
    """``next()`` returns a :class:`Batch`: normalised images on ``device`` and, when ``labeled``,
    ``y`` = one ``{"boxes": float32 (n, 4) input pixels, "labels": int64 (n,)}`` per image."""

    def __init__(self, domain, task, batch_size, device, seed, *, labeled, workers=None, **kw):
        super().__init__(domain, task, batch_size, device, seed, labeled=labeled, workers=_workers(domain, workers), **kw)

    def _dataset(self, domain, *, train, scale, hflip):
        self.collate = functools.partial(_collate, mean=self.task.mean, std=self.task.std)
        return DetectionDataset(domain, self.task.image_size, self.task.channels, train=train, seed=self.seed,
                                labels=self.labeled, scale=scale, hflip=hflip)

    def _batch(self, item) -> Batch:
        y = to_device(item["targets"], self.device) if self.labeled and self.dataset.labels else None
        return Batch(x=item["x"].to(self.device, non_blocking=True), y=y)


def _collate(items, mean, std):
    return collate_items(items, mean, std)


def detection_eval_batches(domain, spec, device, batch_size: int, *, labels: bool, workers: int | None = None
                           ) -> Iterator[tuple[torch.Tensor, list | None, np.ndarray]]:
    """(normalised images on ``device``, per-image targets on CPU or None, uint8 NHWC images at the
    input size) over ``domain`` in order, resized to the input size with their boxes."""
    from torch.utils.data import DataLoader

    ds = DetectionDataset(domain, spec.image_size, spec.channels, train=False, labels=labels)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=_workers(domain, workers),
                        collate_fn=functools.partial(_collate, mean=spec.mean, std=spec.std),
                        generator=torch.Generator().manual_seed(0))  # leaves the global RNG alone
    for item in loader:
        keep = (item["replaced"] == 0).numpy()  # an undecodable sample stands in as a copy of the next one
        if not keep.any():
            continue
        idx = np.flatnonzero(keep)
        x = item["x"][torch.from_numpy(idx)]
        raw = (x.permute(0, 2, 3, 1) * torch.tensor(spec.std) + torch.tensor(spec.mean)).mul(255).round().clamp(0, 255)
        y = [item["targets"][i] for i in idx] if labels and ds.labels else None
        yield x.to(device), y, raw.to(torch.uint8).numpy()

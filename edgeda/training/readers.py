"""How the batches of a streamed domain are read, chosen by the kind of domain.

Per-pixel domains (:class:`~edgeda.data.dense.DenseDomain`) stack their label maps; box-labelled
domains (:class:`~edgeda.data.detection.DetectionDomain`) keep one target record per image. The
task hooks :meth:`edgeda.tasks.Task.stream` and :meth:`edgeda.tasks.Task.eval_batches` ask here, so
a new kind of data adds one entry and no test of a task's name.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..data.detection import DetectionDomain
from .dense_stream import DenseStream
from .detection_stream import DetectionStream, detection_eval_batches


@dataclass(frozen=True)
class Reader:
    stream: type  # a DenseStream-like class: (domain, spec, batch_size, device, seed, *, labeled, ...)
    eval_batches: Callable  # (domain, spec, device, batch_size, *, labels, workers) -> iterator


def _readers():
    return [(DetectionDomain, Reader(DetectionStream, detection_eval_batches)),
            (object, Reader(DenseStream, None))]


def reader_of(domain) -> Reader:
    """The reader of ``domain`` (the first entry whose domain class it is an instance of)."""
    return next(r for cls, r in _readers() if isinstance(domain, cls))

"""Infinite, resumable batch streams over a dense domain, read by a torch ``DataLoader``.

Dense data does not fit in memory at real sizes, so samples are decoded and augmented by
:class:`~edgeda.data.dense_transforms.DenseDataset` in worker processes. Order and augmentation
are deterministic per seed whatever the number of workers: epoch ``e`` visits the permutation
``default_rng([seed, e])`` of the indices (every ``world_size``-th one on a rank under torchrun),
and the sampler hands the dataset ``k = e * N + i``, from which it seeds that sample's own
augmentation. The state is (epoch, position): a resumed stream rebuilds its loader from there and
draws exactly the batches it would have drawn.
"""
from __future__ import annotations

import os

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from ..data.dense import ArrayDenseDomain, DenseDomain
from ..data.dense_transforms import DenseDataset
from ..data.transforms import to_float_nchw
from ..methods.base import Batch
from ..tasks import task_of
from ..tasks.spec import TaskSpec


def default_workers(domain: DenseDomain) -> int:
    """No workers for in-memory domains (nothing to decode from disk); a few for folders."""
    if isinstance(domain, ArrayDenseDomain):
        return 0
    return max(1, min(4, (os.cpu_count() or 2) - 1))


def epoch_order(n: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1,
                weights: np.ndarray | None = None) -> np.ndarray:
    """Epoch ``epoch``'s indices: a permutation, or with ``weights`` (N,) n i.i.d. weighted draws."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(n) if weights is None else rng.choice(n, size=n, p=weights)
    shard = order[rank::world_size]
    return shard if len(shard) else order


class _ResumableSampler(Sampler):
    def __init__(self, n: int, seed: int, epoch: int, pos: int, rank: int, world_size: int, weights=None):
        self.n, self.seed, self.epoch, self.pos, self.rank, self.world_size = n, seed, epoch, pos, rank, world_size
        self.weights = weights

    def __iter__(self):
        epoch, pos = self.epoch, self.pos
        while True:
            order = epoch_order(self.n, self.seed, epoch, self.rank, self.world_size, self.weights)
            for j, i in enumerate(order[pos:], start=pos):
                # weighted draws repeat images within an epoch: k = (epoch n + j) n + i gives each draw its own crop
                yield int(epoch * self.n + i) if self.weights is None else int((epoch * self.n + j) * self.n + i)
            epoch, pos = epoch + 1, 0


class DenseStream:
    """``next()`` returns a :class:`Batch` with normalised images on ``device`` and, when
    ``labeled``, the task's per-pixel target in ``y``: class ids (N, H, W) int64 or depth (N, H, W).
    ``weights`` (N,): draw images i.i.d. with these probabilities (:mod:`edgeda.data.sampling`)
    instead of visiting a permutation per epoch."""

    def __init__(self, domain: DenseDomain, task: TaskSpec, batch_size: int, device: torch.device, seed: int, *,
                 labeled: bool, train: bool = True, workers: int | None = None, rank: int = 0, world_size: int = 1,
                 scale: tuple[float, float] = (0.5, 1.0), hflip: bool = True, weights: np.ndarray | None = None):
        self.domain, self.task, self.batch_size, self.device = domain, task, batch_size, device
        self.labeled = labeled
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.workers = default_workers(domain) if workers is None else workers
        self.dataset = self._dataset(domain, train=train, scale=scale, hflip=hflip)
        self.weights = None if weights is None else np.asarray(weights, np.float64) / np.sum(weights)
        self.epoch, self.pos = 0, 0
        self.replaced = 0  # samples that failed to decode and were replaced by the next good one
        self._iter = None

    def _dataset(self, domain, *, train: bool, scale, hflip: bool):
        return DenseDataset(domain, self.task.image_size, self.task.channels, train=train, seed=self.seed,
                            labels=self.labeled, scale=scale, hflip=hflip)

    collate = None  # the DataLoader's default: a dict of stacked tensors

    def _shard_len(self) -> int:
        return len(epoch_order(len(self.domain), self.seed, self.epoch, self.rank, self.world_size, self.weights))

    def _loader(self):
        sampler = _ResumableSampler(len(self.domain), self.seed, self.epoch, self.pos, self.rank, self.world_size,
                                    self.weights)
        loader = DataLoader(self.dataset, batch_size=self.batch_size, sampler=sampler, num_workers=self.workers,
                            pin_memory=self.device.type == "cuda", persistent_workers=False, collate_fn=self.collate,
                            prefetch_factor=2 if self.workers else None,
                            # its own generator: making an iterator must not draw from the global RNG
                            # (dropout, GAN noise), or a resumed run would see other random numbers
                            generator=torch.Generator().manual_seed(self.seed))
        return iter(loader)

    def next(self) -> Batch:
        if self._iter is None:
            self._iter = self._loader()
        item = next(self._iter)
        self.pos += self.batch_size
        while self.pos >= self._shard_len():
            self.pos -= self._shard_len()
            self.epoch += 1
        self.replaced += int(item["replaced"].sum())
        return self._batch(item)

    def _batch(self, item) -> Batch:
        x = to_float_nchw(item["image"].to(self.device, non_blocking=True), self.task.mean, self.task.std)
        y = None
        if self.labeled:
            key = task_of(self.task).label_key
            if key in item:
                y = item[key].to(self.device, non_blocking=True)
        return Batch(x=x, y=y)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
        self._iter = None  # rebuilt from the restored position on the next batch

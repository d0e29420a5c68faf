"""Infinite, resumable batch streams over an in-memory domain.

Images live on the training device as uint8; each batch is an index gather, a float conversion
and light augmentation, so no DataLoader workers are needed for these sizes. Sampling is a
seeded permutation per epoch; the state (permutation, position, generator) is checkpointed, so a
resumed run draws exactly the batches it would have drawn. Under torchrun each rank draws from
its own shard (every ``world_size``-th index of the shuffled order).
"""
from __future__ import annotations

import numpy as np
import torch

from ..data.domain import Domain
from ..data.transforms import random_contrast, random_translate, to_float_nchw
from ..methods.base import Batch
from ..tasks.spec import TaskSpec


class BatchStream:
    def __init__(
        self,
        domain: Domain,
        task: TaskSpec,
        batch_size: int,
        device: torch.device,
        seed: int,
        *,
        labeled: bool,
        shift: int = 0,
        contrast: float = 0.0,
        rank: int = 0,
        world_size: int = 1,
        weights=None,
    ):
        self.task = task
        self.batch_size = batch_size
        self.device = device
        self.labeled = labeled
        self.shift, self.contrast = shift, contrast
        self.rank, self.world_size = rank, world_size
        self.images = torch.from_numpy(np.ascontiguousarray(domain.images)).to(device)
        self.labels = torch.from_numpy(domain.labels).to(device) if labeled and domain.labels is not None else None
        self.foreground = torch.from_numpy(domain.foreground).to(device) if domain.foreground is not None else None
        self.generator = torch.Generator().manual_seed(seed)
        self.perm = torch.empty(0, dtype=torch.long)
        self.pos = 0
        # per-image sampling weights (edgeda.data.sampling): i.i.d. weighted draws instead of permutations
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float64)

    def _refill(self) -> None:
        if self.weights is None:
            order = torch.randperm(len(self.images), generator=self.generator)
        else:
            order = torch.multinomial(self.weights, len(self.images), replacement=True, generator=self.generator)
        shard = order[self.rank :: self.world_size]
        if len(shard) == 0:
            shard = order
        self.perm = torch.cat([self.perm[self.pos :], shard])
        self.pos = 0

    def next(self) -> Batch:
        while len(self.perm) - self.pos < self.batch_size:
            self._refill()
        idx = self.perm[self.pos : self.pos + self.batch_size]
        self.pos += self.batch_size
        idx_dev = idx.to(self.device)
        x = to_float_nchw(self.images.index_select(0, idx_dev), self.task.mean, self.task.std)
        mask = None
        if self.foreground is not None:
            mask = self.foreground.index_select(0, idx_dev).unsqueeze(1).float().div_(255.0)
        if self.shift:
            if mask is not None:  # shift image and mask together
                both = random_translate(torch.cat([x, mask], 1), self.shift, self.generator)
                x, mask = both[:, :-1], both[:, -1:]
            else:
                x = random_translate(x, self.shift, self.generator)
        x = random_contrast(x, self.contrast, self.generator)
        y = self.labels.index_select(0, idx_dev) if self.labels is not None else None
        return Batch(x=x, y=y, foreground=mask)

    def state_dict(self) -> dict:
        return {"perm": self.perm.clone(), "pos": self.pos, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.perm = state["perm"].long()
        self.pos = int(state["pos"])
        self.generator.set_state(state["generator"])

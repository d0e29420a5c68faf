"""Weight averaging of the shipped modules: an exponential moving average (EMA) over training.

The averaged copy is what the trainer evaluates, selects and ships; the live modules keep
training. Averaging the weights along the trajectory finds flatter minima, which transfer better
under a distribution shift than the end point of SGD (SWAD: Cha et al., "SWAD: Domain
Generalization by Seeking Flat Minima", NeurIPS 2021; mean-teacher EMA: Tarvainen & Valpola 2017;
the SUIT paper reports a "w/ Avg.W" variant above plain SUIT).

    theta_avg <- d_n theta_avg + (1 - d_n) theta,   d_n = min(decay, (1 + n) / (10 + n))

after the n-th update (the warm-up of ``d_n`` lets early averages forget the initial weights).
Floating-point buffers (BatchNorm running statistics) are averaged the same way; integer buffers
(``num_batches_tracked``) are copied.

    >>> avg = WeightAverage({"classifier": model}, decay=0.999)
    >>> for batch in data: train_step(model, batch); avg.update({"classifier": model})
    >>> avg.modules["classifier"]          # evaluate / ship this one
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..errors import EdgedaError


class WeightAverage:
    """EMA copies of named modules (same structure, same device, never trained directly)."""

    def __init__(self, modules: dict[str, nn.Module], decay: float):
        if not 0.0 < decay < 1.0:
            raise EdgedaError(f"--ema {decay}: the decay must lie strictly between 0 and 1 (e.g. 0.999); 0 turns averaging off")
        self.decay = float(decay)
        self.updates = 0
        self.modules = {name: copy.deepcopy(m).requires_grad_(False) for name, m in modules.items()}

    def rate(self) -> float:
        """The decay used by the next update (warmed up over the first updates)."""
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def update(self, modules: dict[str, nn.Module]) -> None:
        d = self.rate()
        for name, live in modules.items():
            avg = self.modules[name].state_dict()
            for key, value in live.state_dict().items():
                if value.dtype.is_floating_point:
                    avg[key].lerp_(value.detach(), 1.0 - d)
                else:
                    avg[key].copy_(value)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"updates": self.updates, "decay": self.decay,
                "modules": {n: m.state_dict() for n, m in self.modules.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.updates = int(state["updates"])
        for name, sd in state["modules"].items():
            self.modules[name].load_state_dict(sd)

"""BatchNorm and parameter helpers for methods that pass batches through a network in several ways."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn


@contextlib.contextmanager
def frozen_bn_statistics(module: nn.Module) -> Iterator[None]:
    """Inside the block, BatchNorm layers in training mode still normalise with the batch's own
    statistics but leave their running statistics as they were, so a source pass does
    not move the statistics that inference on the target domain will use (as in AdaBN,
    Li et al. 2016: inference normalises with target statistics).

    >>> with frozen_bn_statistics(clf):
    ...     logits_s = clf(x_source)      # normalised by source batch statistics
    >>> logits_t = clf(x_target)          # normalised by, and updating, target statistics
    """
    layers = [m for m in module.modules()
              if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    names = ("running_mean", "running_var", "num_batches_tracked")
    # The pass updates throw-away copies; the originals are swapped back untouched (restoring them
    # in place would bump their autograd version and break the backward pass of this forward).
    originals = [[getattr(m, n) for n in names] for m in layers]
    try:
        for m, bufs in zip(layers, originals):
            for n, b in zip(names, bufs):
                setattr(m, n, b.detach().clone())
        yield
    finally:
        for m, bufs in zip(layers, originals):
            for n, b in zip(names, bufs):
                setattr(m, n, b)


@contextlib.contextmanager
def constant_parameters(module: nn.Module) -> Iterator[None]:
    """Inside the block the module's parameters do not require gradients, so a forward pass through
    it passes gradients on to its input but gives its own weights none (a loss that should train
    what feeds the module, not the module; as GAN code freezes D for the generator's step)."""
    params = [p for p in module.parameters() if p.requires_grad]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p in params:
            p.requires_grad_(True)

"""The interface every source-free adaptation method implements, and helpers they share.

A method receives the shipped task network (a classifier, or a dense segmentation model; rebuilt
from the bundle), the task spec and its options; ``step(x)`` takes one batch of normalised target
images (for dense tasks possibly a crop of the frames, ``self.window``) and returns its losses. The
runner (:mod:`edgeda.adapt.runner`) owns everything else: the time and memory budget, the batch
stream, collapse monitoring with rollback, and the new bundle. No method ever sees source data:
there is nowhere for it to come from.
"""
from __future__ import annotations

import copy
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from ..data.transforms import to_float_nchw
from ..errors import EdgedaError
from ..methods.base import Engine
from ..options import Configurable
from ..registry import Registry
from ..tasks import task_of
from ..tasks.spec import TaskSpec

ADAPT_METHODS: Registry = Registry("source-free adaptation method")

BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class AdaptMethod(Configurable):
    """Base class. Subclasses set ``name``, ``summary``, ``defaults`` (options with their values,
    overridable as ``key=value``), ``default_iters`` and implement :meth:`build` and :meth:`step`.

    ``self.model`` is the model that ships (the dense model of a segmentation bundle);
    ``self.source_state`` a frozen copy of the shipped weights; ``self.progress`` in [0, 1] is set
    by the runner (iterations or time, whichever is further along); ``self.window`` is the crop
    ``(top, left, height, width)`` of the frames in the batch being stepped on (None: full frames),
    also set by the runner; ``self.engine`` runs every update (non-finite check, AMP on CUDA).
    ``tasks`` names the tasks the method adapts. ``deployed`` is the model whose predictions the
    method stands behind: the runner monitors it, selects among its states and writes it (the
    model itself, unless a method predicts with another network, e.g. CoTTA's mean teacher).
    ``self.shipped_training`` is the bundle's training record (``{}`` when built without one): what
    the shipped model was trained with, e.g. whether its augmentations mirrored the images.
    """

    kind: ClassVar[str] = "adapt method"
    # options that differ on segmentation bundles (merged over ``defaults``; options given explicitly win)
    dense_defaults: ClassVar[dict] = {}
    default_iters: ClassVar[int] = 500
    tasks: ClassVar[tuple[str, ...]] = ("classification",)
    # forward passes of the model per step whose activations are kept for backward (memory plan)
    model_passes: ClassVar[float] = 1.0

    def __init__(self, model: nn.Module, task: TaskSpec, *, options: dict | None = None,
                 engine: Engine | None = None, seed: int = 0, training: dict | None = None):
        if task_of(task).spatial_output:
            options = {**self.dense_defaults, **(options or {})}
        self.opts = self.resolve_options(options)
        self.task = task
        self.shipped_training = training or {}  # the bundle's training record (its config: augmentations)
        self.engine = engine or Engine()
        self.device = self.engine.device
        self.model = model.to(self.device)
        self.source_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.progress = 0.0
        self.window: tuple[int, int, int, int] | None = None
        self.generator = torch.Generator().manual_seed(seed)
        self.optims: dict[str, torch.optim.Optimizer] = {}
        self.build()

    # -- to implement -------------------------------------------------------------------------
    def build(self) -> None:
        raise NotImplementedError

    def step(self, x: torch.Tensor, idx: torch.Tensor | None = None) -> dict[str, float]:
        """One update on target batch ``x`` (normalised NCHW); ``idx`` are its indices in the target set."""
        raise NotImplementedError

    def prepare(self, target: "TargetSet") -> None:
        """Called once before the loop, and again whenever :meth:`refresh_due` says so, with the
        whole unlabeled target set (e.g. SHOT's pseudo-labels, TENT's BatchNorm re-estimation)."""

    def refresh_due(self, iteration: int, epoch_iters: int) -> bool:
        return False

    def extra_modules(self) -> dict[str, nn.Module]:
        """Modules trained besides the model (for the memory plan and reports)."""
        return {}

    @property
    def deployed(self) -> nn.Module:
        """The network that is monitored, selected and written into the new bundle."""
        return self.model

    # -- shared helpers -----------------------------------------------------------------------
    def state_snapshot(self) -> dict:
        """What rollback restores: the model's weights and buffers (BatchNorm statistics)."""
        return copy.deepcopy({k: v.detach().cpu() for k, v in self.model.state_dict().items()})

    def restore(self, snapshot: dict) -> None:
        self.model.load_state_dict(snapshot)


class TargetSet:
    """The unlabeled target images (uint8 (N,H,W,C) on the CPU, at the task's (H, W)) and the
    task's normalisation. Dense frames go through in smaller batches (``batch_size``)."""

    def __init__(self, images, task: TaskSpec, device, batch_size: int | None = None):
        self.images, self.task, self.device = images, task, torch.device(device)
        self.batch_size = batch_size or task_of(task).eval_batch_size

    def __len__(self) -> int:
        return len(self.images)

    def tensor(self, idx, window: tuple[int, int, int, int] | None = None) -> torch.Tensor:
        """Normalised NCHW float batch of the images at ``idx`` on the device (cropped to ``window``)."""
        arr = self.images[idx]
        if window is not None:
            top, left, h, w = window
            arr = np.ascontiguousarray(arr[:, top:top + h, left:left + w])
        xb = torch.from_numpy(arr).to(self.device)
        return to_float_nchw(xb, self.task.mean, self.task.std)

    def batches(self, batch_size: int | None = None):
        bs = batch_size or self.batch_size
        for i in range(0, len(self.images), bs):
            yield self.tensor(slice(i, i + bs))

    @torch.no_grad()
    def predictions(self, model: nn.Module):
        """(slice, output) of ``model`` (eval mode, its mode restored) over every image, batch by batch:
        float tensors, or a dict of them (a detector's raw outputs)."""
        was = model.training
        model.eval()
        try:
            for i in range(0, len(self.images), self.batch_size):
                out = model(self.tensor(slice(i, i + self.batch_size)))
                yield slice(i, i + self.batch_size), ({k: v.float() for k, v in out.items()} if isinstance(out, dict)
                                                      else out.float())
        finally:
            model.train(was)

    @torch.no_grad()
    def features_logits(self, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """(features, logits) of every image, on the CPU, with ``model`` in eval mode."""
        was = model.training
        model.eval()
        feats, logits = [], []
        for x in self.batches():
            f, z = model.features_and_logits(x)
            feats.append(f.float().cpu())
            logits.append(z.float().cpu())
        model.train(was)
        return torch.cat(feats), torch.cat(logits)


def hypothesis_layers(model: nn.Module) -> list[nn.Conv2d]:
    """The last linear map of a dense segmentation model: the 1x1 convolutions of its head whose
    outputs are the class logits (one for the U-Net and DeepLab heads; LR-ASPP sums two, on the
    stride-8 map and on the attended high-level map). Their inputs, concatenated, are the pixel
    features the logits are a linear function of."""
    k = getattr(model, "num_outputs", None)
    head = getattr(model, "head", None)
    convs = [m for m in (head.modules() if head is not None else ())
             if isinstance(m, nn.Conv2d) and m.out_channels == k and m.kernel_size == (1, 1)]
    if not convs:
        raise EdgedaError("this dense model has no 1x1 classifier convolution in its head; SHOT needs one")
    return convs


class pixel_features:
    """Context manager capturing, during a forward of a dense model, the pixel features at the
    classifier's resolution (N, C, h, w) and the head's logits there (N, K, h, w), before the
    upsampling to the input size.

    >>> with pixel_features(model) as cap:
    ...     model(x)
    >>> cap.features.shape, cap.logits.shape
    """

    def __init__(self, model: nn.Module):
        self.layers = hypothesis_layers(model)

    def __enter__(self):
        self._ins, self._outs = [], []

        def hook(_m, inputs, output):
            self._ins.append(inputs[0])
            self._outs.append(output)

        self._handles = [m.register_forward_hook(hook) for m in self.layers]
        return self

    @property
    def features(self) -> torch.Tensor:
        return torch.cat(self._ins, 1)

    @property
    def logits(self) -> torch.Tensor:
        return torch.stack(self._outs).sum(0)

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        return False


def bn_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, BN_TYPES)]


@torch.no_grad()
def reestimate_bn(model: nn.Module, batches, momentum: float | None = None) -> None:
    """Replace BatchNorm running statistics by those of ``batches`` (AdaBN, Li et al. 2016):
    cumulative average over the given batches (``momentum=None``)."""
    layers = bn_layers(model)
    if not layers:
        return
    saved = [(m.momentum, m.training) for m in layers]
    was = model.training
    model.eval()
    for m in layers:
        m.reset_running_stats()
        m.momentum = momentum
        m.train()
    for x in batches:
        model(x)
    for m, (mom, tr) in zip(layers, saved):
        m.momentum = mom
        m.train(tr)
    model.train(was)

"""Contrastive synthetic-to-real generalisation (CSG): no target images at all."""
from __future__ import annotations

import copy
import sys

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import EdgedaError
from ..models.augment import rand_augment
from ..models.pooling import attention_pool
from .base import Batch, Method
from .losses import info_nce
from .registry import METHODS


class ProjectionHead(nn.Module):
    """Non-linear projection (MoCo v2 / SimCLR): Linear - ReLU - Linear."""

    def __init__(self, in_dim: int, hidden: int = 256, out_dim: int = 128):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim))

    def forward(self, x):
        return self.net(x)


class NegativeQueue(nn.Module):
    """MoCo's queue of negative keys (a ring buffer), plus CSG's 'frozen copy taken' flag."""

    def __init__(self, size: int, dim: int):
        super().__init__()
        self.register_buffer("keys", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("started", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def push(self, k: torch.Tensor) -> None:
        n, size = k.shape[0], self.keys.shape[0]
        idx = (self.ptr + torch.arange(n, device=k.device)) % size
        self.keys[idx] = F.normalize(k.float(), dim=1)
        self.ptr.copy_((self.ptr + n) % size)


def feature_map(backbone: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(spatial map before the backbone's last stage, backbone features) in one pass."""
    if hasattr(backbone, "conv") and hasattr(backbone, "fc"):  # dtn
        fmap = backbone.conv(x)
        return fmap, backbone.fc(fmap)
    if hasattr(backbone, "net"):  # resnet_small: [..., AdaptiveAvgPool2d, Flatten]
        fmap = backbone.net[:-2](x)
        return fmap, backbone.net[-2:](fmap)
    raise EdgedaError(f"csg needs a backbone with a spatial feature map (dtn or resnet_small), not {type(backbone).__name__}")


@METHODS.register("csg")
class CSG(Method):
    """CSG: keep the features close to a frozen initial encoder's, contrastively, while learning the task.

    Chen, Yu, Kautz, Anandkumar et al., "Contrastive Syn-to-Real Generalization", ICLR 2021.

    Student encoder E (the shipped classifier's backbone) and frozen copy E_0 of the initial
    encoder; projection heads g (trained) and g_0 (EMA of g: g_0 <- m g_0 + (1 - m) g);
    A-pool (softmax attention of each location to the global average feature) applied to the
    DTN's last conv map (``features.conv``, before its FC layer: the one spatial map, like the
    paper's layer-group 4 of a ResNet). With two RandAugment views a(x), a'(x) of a synthetic image:
        q = g(Apool(E_map(a(x)))),  k = g_0(Apool(E_0,map(a'(x))))  (no gradient)
        L = CE(C(a(x)), y) + lambda * InfoNCE(q, k, queue),  InfoNCE at temperature T,
    negatives = the last K keys (MoCo queue). The task head sits on the FC features as usual.
    CSG uses no target images (``uses_target = False``): it is domain generalisation.

    The initial encoder: the paper starts from ImageNet weights. Pass ``--init BUNDLE_OR_SAFETENSORS``
    for a pre-trained classifier (e.g. a source-only bundle). Without one there is no pre-trained
    encoder to keep close to, so CSG first trains source-only (CE on augmented source images) for
    the first ``pretrain`` fraction of the iteration budget and then freezes that model as E_0 —
    a deviation from the paper that this class announces on stderr when it happens.

    Defaults: lambda 0.1, T 0.07, queue 4096 (paper 65536; the digits budget is small),
    m 0.99 (paper 0.999; short schedule), projection 256-128, RandAugment 2 ops at magnitude
    0.5, pretrain 0.3; one optimizer over the student classifier and g.
    """

    summary = "contrastive syn-to-real generalisation: InfoNCE to a frozen initial encoder, A-pool, no target data (Chen et al. 2021)"
    uses_target = False
    defaults = {"weight": 0.1, "temperature": 0.07, "queue": 4096, "momentum": 0.99, "proj_dim": 128,
                "proj_hidden": 256, "n_ops": 2, "magnitude": 0.5, "pretrain": 0.3}

    def build(self) -> None:
        o = self.opts
        clf = self.make_classifier()
        self.nets["classifier"] = clf
        t = self.task
        with torch.no_grad():
            was = clf.training
            clf.eval()
            channels = feature_map(clf.features, torch.zeros(1, t.channels, *t.image_size))[0].shape[1]
            clf.train(was)
        self.nets["proj"] = ProjectionHead(channels, int(o["proj_hidden"]), int(o["proj_dim"]))
        self.nets["frozen"] = copy.deepcopy(clf.features).requires_grad_(False)
        self.nets["proj_ema"] = copy.deepcopy(self.nets["proj"]).requires_grad_(False)
        self.nets["queue"] = NegativeQueue(int(o["queue"]), int(o["proj_dim"]))
        self.optims["main"] = self.make_optimizer(list(clf.parameters()) + list(self.nets["proj"].parameters()))

    def load_init(self, path: str) -> None:
        super().load_init(path)
        self._freeze_initial()

    @torch.no_grad()
    def _freeze_initial(self) -> None:
        self.nets["frozen"].load_state_dict(self.classifier.features.state_dict())
        self.nets["proj_ema"].load_state_dict(self.nets["proj"].state_dict())
        self.nets["queue"].started.fill_(True)

    def train(self) -> None:
        super().train()
        self.nets["frozen"].eval()  # E_0 is fixed, BatchNorm statistics included

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        return rand_augment(x, self.task.mean, self.task.std, int(self.opts["n_ops"]), float(self.opts["magnitude"]))

    def step(self, source: Batch, target: Batch | None) -> dict[str, float]:
        o, queue = self.opts, self.nets["queue"]
        if not bool(queue.started) and self.progress >= float(o["pretrain"]):
            print(f"csg: no --init; freezing the source-only model trained for the first {float(o['pretrain']):.0%} "
                  "of the budget as the initial encoder (the paper uses ImageNet weights)", file=sys.stderr)
            self._freeze_initial()
        xa = self.augment(source.x)
        started = bool(queue.started)
        with self.autocast():
            fmap, feats = feature_map(self.classifier.features, xa)
            cls_loss = F.cross_entropy(self.classifier.head(feats).float(), source.y)
            if started:
                q = self.nets["proj"](attention_pool(fmap))
                with torch.no_grad():
                    k = self.nets["proj_ema"](attention_pool(feature_map(self.nets["frozen"], self.augment(source.x))[0]))
                nce = info_nce(q, k, queue.keys.clone(), float(o["temperature"]))
        if not started:  # source-only phase before the initial encoder exists
            self.update(cls_loss)
            return {"loss/cls": cls_loss.item()}
        loss = cls_loss + float(o["weight"]) * nce
        self.update(loss)
        with torch.no_grad():
            m = float(o["momentum"])
            for pe, p in zip(self.nets["proj_ema"].parameters(), self.nets["proj"].parameters()):
                pe.mul_(m).add_(p.detach(), alpha=1 - m)
        queue.push(k)
        return {"loss/cls": cls_loss.item(), "loss/nce": nce.item()}

"""Contrastive synthetic-to-real generalisation (CSG): no target images at all."""
from __future__ import annotations

import copy
import sys

import torch
import torch.nn.functional as F
from torch import nn

from ..data.photos import anchor_photos, paired_crops
from ..errors import EdgedaError
from ..models.augment import rand_augment
from ..models.norm import frozen_bn_statistics
from ..models.pooling import attention_pool
from .base import Batch, Method
from .losses import info_nce, nt_xent
from .registry import METHODS

# Self-supervised pre-training on anchor images (option anchor): SimCLR's strong augmentation
# (RandAugment with 2 ops at half range on top of the crops) and MoCo v2's temperature.
ANCHOR_OPS, ANCHOR_MAGNITUDE, ANCHOR_TEMPERATURE = 2, 0.5, 0.2


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


def feature_maps(backbone: nn.Module, x: torch.Tensor, n: int = 1) -> tuple[list[torch.Tensor], torch.Tensor]:
    """(the spatial maps after the backbone's last ``n`` trunk stages, shallower first; the backbone
    features) in one pass."""
    if hasattr(backbone, "conv") and hasattr(backbone, "fc"):  # dtn: three conv stages, then FC
        stages, tail = list(backbone.conv), backbone.fc
    elif hasattr(backbone, "net"):  # resnet_small: [stem, stages..., AdaptiveAvgPool2d, Flatten]
        stages, tail = list(backbone.net[:-2]), backbone.net[-2:]
    else:
        raise EdgedaError(f"csg needs a backbone with a spatial feature map (dtn or resnet_small), not {type(backbone).__name__}")
    if not 1 <= n <= len(stages):
        raise EdgedaError(f"csg option layers={n}: this backbone has {len(stages)} trunk stages")
    maps, h = [], x
    for i, stage in enumerate(stages):
        h = stage(h)
        if i >= len(stages) - n:
            maps.append(h)
    return maps, tail(h)


@METHODS.register("csg")
class CSG(Method):
    """CSG: keep the features close to a frozen initial encoder's, contrastively, while learning the task.

    Chen, Yu, Kautz, Anandkumar et al., "Contrastive Syn-to-Real Generalization", ICLR 2021.

    Student encoder E (the shipped classifier's backbone) and frozen copy E_0 of the initial
    encoder; projection heads g (trained) and g_0 (EMA of g: g_0 <- m g_0 + (1 - m) g);
    A-pool (softmax attention of each location to the global average feature) applied to the
    maps after the DTN's last ``layers`` conv stages (before its FC layer; 1 = the last map, like
    the paper's layer group 4 of a ResNet; 2 = the last two, like its best ablation, groups {3, 4}),
    each layer l with its own g_l, g_0,l and queue. With two RandAugment views a(x), a'(x) of a
    synthetic image:
        q_l = g_l(Apool(E_l(a(x)))),  k_l = g_0,l(Apool(E_0,l(a'(x)); attention of E_l(a'(x))))  (no gradient)
        L = CE(C(a(x)), y) + lambda * sum_l InfoNCE(q_l, k_l, queue_l),  InfoNCE at temperature T,
    negatives = the last K keys (MoCo queue). The key's A-pool weights come from the student's map
    of the same view, E_l(a'(x)), not from the frozen map (the paper computes the attention on the
    student only and copies it to the frozen side), so query and key pool the same locations. The
    task head sits on the FC features as usual.
    CSG uses no target images (``uses_target = False``): it is domain generalisation.

    The initial encoder: the paper starts from ImageNet weights. Pass ``--init BUNDLE_OR_SAFETENSORS``
    for a pre-trained classifier (e.g. a source-only bundle). Without one there is no pre-trained
    encoder to keep close to, so CSG first trains source-only (CE on augmented source images) for
    the first ``pretrain`` fraction of the iteration budget and then freezes that model as E_0 —
    a deviation from the paper that this class announces on stderr when it happens.
    ``anchor`` chooses what that own pre-training learns from: ``source`` (CE on the synthetic
    images, the default); ``source_ssl`` (the synthetic images without their labels: two
    RandAugment views of each, 2 ops at 0.5); or real images that are neither source nor target,
    like the paper's ImageNet start but self-supervised: ``photos`` (the three photographs the
    installed scikit-learn and matplotlib ship) or a folder of one's own unlabeled real pictures,
    from which small pictures are cut (two overlapping crops of each region, RandAugment 2 ops at
    0.5 on each). The self-supervised anchors train the encoder with SimCLR's loss (temperature
    0.2, the other pairs of the batch as negatives, its own projection head and optimizer at the
    full learning rate) for the ``pretrain`` fraction of the budget; then that encoder is frozen as
    E_0 and the task starts.

    Defaults: lambda 0.1, T 0.07, queue 4096 (paper 65536; the digits budget is small),
    m 0.99 (paper 0.999; short schedule), projection 256-128, RandAugment 1 op per image at
    magnitude 0.2 of each op's range (the authors' released recipe, N = 1, M = 6 of 30), pretrain 0.3,
    anchor source, layers 1, backbone_lr 1 (a factor on the encoder's learning rate; the released recipe fine-tunes
    the ImageNet encoder at 0.1 of the head's); one optimizer over the student classifier and the g_l.
    The RandAugment default is the released recipe's, chosen over 2 ops at 0.5 by the label-free
    score on the digits benchmark (benchmarks/DECISIONS.md).
    """

    summary = "contrastive syn-to-real generalisation: InfoNCE to a frozen initial encoder, A-pool, no target data (Chen et al. 2021)"
    uses_target = False
    defaults = {"weight": 0.1, "temperature": 0.07, "queue": 4096, "momentum": 0.99, "proj_dim": 128,
                "proj_hidden": 256, "n_ops": 1, "magnitude": 0.2, "pretrain": 0.3, "layers": 1,
                "backbone_lr": 1.0, "anchor": "source"}

    @staticmethod
    def _keys(j: int) -> tuple[str, str, str]:
        """Names of (g, g_0, queue) for the j-th contrasted layer counted from the deepest (j = 0 keeps
        the single-layer names, so checkpoints of either setting read the same way)."""
        return ("proj", "proj_ema", "queue") if j == 0 else (f"proj_l{j}", f"proj_ema_l{j}", f"queue_l{j}")

    def build(self) -> None:
        o = self.opts
        clf = self.make_model()
        self.nets["model"] = clf
        t = self.task
        self.n_layers = o.layers
        with torch.no_grad():
            was = clf.training
            clf.eval()
            maps, feats = feature_maps(clf.features, torch.zeros(1, t.channels, *t.image_size), self.n_layers)
            clf.train(was)
        self.nets["frozen"] = copy.deepcopy(clf.features).requires_grad_(False)
        heads = []
        for j, fmap in enumerate(reversed(maps)):
            proj, ema, queue = self._keys(j)
            self.nets[proj] = ProjectionHead(fmap.shape[1], o.proj_hidden, o.proj_dim)
            self.nets[ema] = copy.deepcopy(self.nets[proj]).requires_grad_(False)
            self.nets[queue] = NegativeQueue(o.queue, o.proj_dim)
            heads += list(self.nets[proj].parameters())
        bb = o.backbone_lr
        if bb <= 0:
            raise EdgedaError(f"csg option backbone_lr={bb}: must be > 0 (a factor on the learning rate)")
        if bb == 1.0:
            self.optims["main"] = self.make_optimizer(list(clf.parameters()) + heads)
        else:  # the encoder at a fraction of the learning rate, the task head and the g_l at the full one
            self.optims["main"] = self.make_optimizer([
                {"params": list(clf.features.parameters()), "lr_mult": bb},
                {"params": list(clf.head.parameters()) + heads}])
        self.anchor = o.anchor
        self.anchor_images = None
        if self.anchor != "source":  # self-supervised pre-training of E_0 on unlabeled images
            if o.pretrain <= 0:
                raise EdgedaError(f"csg option anchor={self.anchor} pre-trains the initial encoder on those images "
                                  "during the first `pretrain` fraction of the budget: pretrain must be > 0")
            if self.anchor != "source_ssl":
                self.anchor_images = anchor_photos(self.anchor, t.channels)
            self.nets["proj_anchor"] = ProjectionHead(feats.shape[1], o.proj_hidden, o.proj_dim)
            self.optims["anchor"] = self.make_optimizer(list(clf.features.parameters())
                                                        + list(self.nets["proj_anchor"].parameters()))

    def load_init(self, path: str) -> None:
        if self.anchor != "source":
            raise EdgedaError(f"csg: --init gives the initial encoder and option anchor={self.anchor} pre-trains one; "
                              "use one of them")
        super().load_init(path)
        self._freeze_initial()

    @torch.no_grad()
    def _freeze_initial(self) -> None:
        self.nets["frozen"].load_state_dict(self.model.features.state_dict())
        for j in range(self.n_layers):
            proj, ema, _ = self._keys(j)
            self.nets[ema].load_state_dict(self.nets[proj].state_dict())
        self.nets["queue"].started.fill_(True)

    def train(self) -> None:
        super().train()
        self.nets["frozen"].eval()  # E_0 is fixed, BatchNorm statistics included

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        return rand_augment(x, self.task.mean, self.task.std, self.opts.n_ops, self.opts.magnitude)

    def anchor_step(self, x: torch.Tensor) -> dict[str, float]:
        """One SimCLR step of the encoder: on two views of the source images ``x`` (labels unused) for
        ``anchor=source_ssl``, else on ``len(x)`` pairs of crops of the anchor images."""
        t, dev = self.task, x.device
        if self.anchor_images is None:
            pairs = (x, x)
        else:
            if self.anchor_images.device != dev:
                self.anchor_images = self.anchor_images.to(dev)
            m = torch.tensor(t.mean, device=dev).view(1, -1, 1, 1)
            s = torch.tensor(t.std, device=dev).view(1, -1, 1, 1)
            pairs = tuple((v - m) / s for v in paired_crops(self.anchor_images, len(x), t.image_size))
        n = len(x)
        views = [rand_augment(v, t.mean, t.std, ANCHOR_OPS, ANCHOR_MAGNITUDE) for v in pairs]
        with self.autocast():  # both views in one batch, as SimCLR normalises them
            z = self.nets["proj_anchor"](self.model.features(torch.cat(views)))
            loss = nt_xent(z[:n], z[n:], ANCHOR_TEMPERATURE)
        self.update(loss, "anchor")
        return {"loss/anchor": loss.item()}

    def step(self, source: Batch, target: Batch | None) -> dict[str, float]:
        o, n = self.opts, self.n_layers
        if not bool(self.nets["queue"].started) and self.progress >= o.pretrain:
            what = ("the source-only model trained" if self.anchor == "source" else
                    "the encoder pre-trained on the source images without their labels" if self.anchor_images is None else
                    f"the encoder pre-trained without labels on {len(self.anchor_images)} anchor images")
            print(f"csg: no --init; freezing {what} for the first {o.pretrain:.0%} "
                  "of the budget as the initial encoder (the paper uses ImageNet weights)", file=sys.stderr)
            self._freeze_initial()
        if not bool(self.nets["queue"].started) and self.anchor != "source":
            return self.anchor_step(source.x)
        xa = self.augment(source.x)
        started = bool(self.nets["queue"].started)
        with self.autocast():
            maps, feats = feature_maps(self.model.features, xa, n)
            cls_loss = F.cross_entropy(self.model.head(feats).float(), source.y)
            if started:
                with torch.no_grad():  # key view a'(x): frozen maps, pooled with the student's attention on a'(x)
                    xk = self.augment(source.x)
                    frozen_maps = feature_maps(self.nets["frozen"], xk, n)[0]
                    with frozen_bn_statistics(self.model):
                        attn_maps = feature_maps(self.model.features, xk, n)[0]
                nces, keys = [], []
                for j, (fmap, fmap0, fmap_a) in enumerate(zip(reversed(maps), reversed(frozen_maps), reversed(attn_maps))):
                    proj, ema, queue = self._keys(j)
                    q = self.nets[proj](attention_pool(fmap))
                    with torch.no_grad():
                        keys.append(self.nets[ema](attention_pool(fmap0, attention_from=fmap_a)))
                    nces.append(info_nce(q, keys[-1], self.nets[queue].keys.clone(), o.temperature))
                nce = torch.stack(nces).sum()
        if not started:  # source-only phase before the initial encoder exists
            self.update(cls_loss, "main")
            return {"loss/cls": cls_loss.item()}
        loss = cls_loss + o.weight * nce
        self.update(loss, "main")
        with torch.no_grad():
            m = o.momentum
            for j, k in enumerate(keys):
                proj, ema, queue = self._keys(j)
                for pe, p in zip(self.nets[ema].parameters(), self.nets[proj].parameters()):
                    pe.mul_(m).add_(p.detach(), alpha=1 - m)
                self.nets[queue].push(k)
        return {"loss/cls": cls_loss.item(), "loss/nce": nce.item()}

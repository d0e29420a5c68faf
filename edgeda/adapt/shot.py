"""SHOT: Source HypOthesis Transfer (Liang et al., ICML 2020), "Do we really need to access the
source data?".

The head h (the source hypothesis) is frozen; the feature extractor g is trained on target
images with information maximisation plus self-supervised pseudo-labels:

    L(g) = E_x[H(p(x))] - H(E_x[p(x)]) + beta * CE(p(x), y_hat(x)),     p = softmax(h(g(x)))

y_hat comes from feature-space class centroids (weighted k-means, cosine distance): with
f = [g(x), 1] / ||[g(x), 1]||,

    c_k^(0) = sum_x p_k(x) f(x) / sum_x p_k(x),   y_hat = argmin_k cos_dist(f(x), c_k^(0))
    c_k^(1) = mean of f(x) over y_hat(x) = k,     y_hat = argmin_k cos_dist(f(x), c_k^(1))

recomputed over the whole target set (in eval mode) at the start and every epoch.

Segmentation bundles (our carry-over of SHOT to pixels; the paper adapts classifiers). h is the
model's last linear map, the head's 1x1 classifier convolution(s)
(:func:`~edgeda.adapt.base.hypothesis_layers`); g is everything before it (encoder, ASPP /
decoder). Every pixel u of a frame is a sample:

    L(g) = E_{n,u}[H(p_{n,u})] - (w_image E_n[H(mean_u p_{n,u})] - w_batch KL(mean_{n,u} p_{n,u} || pi))
           + beta * CB-CE(p, y_hat)

(:func:`~edgeda.adapt.losses.pixel_information_maximisation_terms`) with pi the shipped model's
mean pixel-class probabilities, measured on the target frames before any update
(``diversity_prior="shipped"``, the default for segmentation bundles; ``"uniform"`` gives the
paper's H(mean p) term). Pixel classes are far from balanced (background covers most of
a frame), and pushing the batch marginal towards uniform turned background into foreground
classes on digitscenes -> handwritten-scenes (mIoU 14.9 -> 5.3 on a 40-frame trial, seen with
labels only in that report); the prior keeps the term's purpose (no class may swallow the batch)
without that pull. CB-CE is the
class-balanced cross-entropy (:func:`~edgeda.adapt.losses.class_balanced_cross_entropy`: each
pseudo-class's mean, averaged over the classes present), so background pixels do not drown the
rare classes. The centroids use the pixel features f at the classifier's resolution: at most
``centroid_pixels`` pixels sampled per frame (bounding memory to N x centroid_pixels rows),
then every pixel of every frame is assigned to its nearest centroid and the label map is
upsampled (nearest) to the frame; labels are stored as uint8 maps (N, H, W) and cropped with the
training window.

Defaults (the paper's and its code's): beta = 0.3; SGD, lr 0.01 with lr_p = lr (1 + 10 p)^-0.75,
momentum 0.9, Nesterov, weight decay 1e-3 (the authors' code; 5e-4 is the source training's);
epsilon 1e-5 in the diversity term; ``diversity_prior`` = uniform for classifiers (the paper's
H(E_x[p]); ``shipped`` uses -KL(E_x[p] || pi) with pi the shipped model's mean prediction on the
target images); 300 iterations unless ``--iters`` says otherwise. On segmentation the encoder
learns at 0.1 x lr (the paper's code does the same for its backbone), w_batch = 1 (the paper's
diversity term over the batch) and w_image = 0.1 (ours: a single frame rarely shows every class,
so its marginal is pushed only lightly towards uniform), ``diversity_prior`` = shipped (above, in
``dense_defaults``); ``centroid_pixels`` = 256.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..methods.base import build_optimizer
from .base import ADAPT_METHODS, AdaptMethod, hypothesis_layers, pixel_features
from .losses import class_balanced_cross_entropy, pixel_information_maximisation_terms
from ..scores import information_maximisation_terms
from ..tasks import task_of


def _augmented(features: torch.Tensor) -> torch.Tensor:
    """f = [g, 1] / ||[g, 1]|| for (M, d) features."""
    return F.normalize(torch.cat([features.float(), torch.ones(len(features), 1, device=features.device)], 1), dim=1)


def _assign(f: torch.Tensor, centroids: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    sim = f @ centroids.t()
    sim[:, ~keep] = -float("inf")  # classes nobody was assigned to take no labels
    return sim.argmax(1)


def shot_centroids(features: torch.Tensor, logits: torch.Tensor, rounds: int = 1, min_count: int = 0
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """SHOT's class centroids: soft-weighted, then ``rounds`` hard k-means refinements.

    ``features`` (M, d), ``logits`` (M, K). Returns (unit centroids (K, d + 1), classes that keep a
    centroid (K,) bool)."""
    f = _augmented(features)
    p = F.softmax(logits.float(), 1)
    cent = F.normalize((p.t() @ f) / (p.sum(0)[:, None] + 1e-8), dim=1)
    k = logits.shape[1]
    keep = torch.ones(k, dtype=torch.bool)
    for _ in range(rounds):
        onehot = F.one_hot(_assign(f, cent, keep), k).float()
        counts = onehot.sum(0)
        cent = F.normalize((onehot.t() @ f) / (counts[:, None] + 1e-8), dim=1)
        keep = counts > min_count
    return cent, keep


def centroid_pseudo_labels(features: torch.Tensor, logits: torch.Tensor, rounds: int = 1, min_count: int = 0) -> torch.Tensor:
    """SHOT's pseudo-labels: soft-weighted centroids, then ``rounds`` hard k-means refinements.

    ``features``: (N, d), ``logits``: (N, K) of the current model. Returns (N,) int64 labels.
    """
    cent, keep = shot_centroids(features, logits, rounds, min_count)
    return _assign(_augmented(features), cent, keep)


@torch.no_grad()
def pixel_pseudo_labels(model: torch.nn.Module, target, pixels_per_frame: int, generator: torch.Generator) -> torch.Tensor:
    """Per-pixel SHOT pseudo-labels of every target frame, (N, H, W) uint8 on the CPU: centroids
    from ``pixels_per_frame`` sampled pixel features per frame, then every pixel assigned."""
    was = model.training
    model.eval()
    try:
        feats, logits = [], []
        for x in target.batches():
            with pixel_features(model) as cap:
                model(x)
            f, z = cap.features.float(), cap.logits.float()
            n, c, h, w = f.shape
            pick = torch.randint(0, h * w, (n, min(pixels_per_frame, h * w)), generator=generator).to(f.device)
            feats.append(f.flatten(2).gather(2, pick[:, None].expand(n, c, -1)).permute(0, 2, 1).reshape(-1, c).cpu())
            k = z.shape[1]
            logits.append(z.flatten(2).gather(2, pick[:, None].expand(n, k, -1)).permute(0, 2, 1).reshape(-1, k).cpu())
        cent, keep = shot_centroids(torch.cat(feats), torch.cat(logits))
        cent, keep = cent.to(target.device), keep.to(target.device)
        maps = []
        for x in target.batches():
            with pixel_features(model) as cap:
                model(x)
            f = cap.features.float()
            n, c, h, w = f.shape
            lab = _assign(_augmented(f.permute(0, 2, 3, 1).reshape(-1, c)), cent, keep).view(n, 1, h, w)
            lab = F.interpolate(lab.float(), size=x.shape[-2:], mode="nearest")[:, 0]
            maps.append(lab.to("cpu", torch.uint8))
        return torch.cat(maps)
    finally:
        model.train(was)


@torch.no_grad()
def mean_pixel_probabilities(model: torch.nn.Module, target) -> torch.Tensor:
    """The mean softmax over every pixel of every target frame (K,), on the CPU."""
    total, n = None, 0
    for _, out in target.predictions(model):
        p = F.softmax(out, 1).sum((0, 2, 3)).double().cpu()
        total = p if total is None else total + p
        n += out.shape[0] * out.shape[2] * out.shape[3]
    return (total / n).float()


@ADAPT_METHODS.register("shot")
class Shot(AdaptMethod):
    summary = "SHOT (Liang et al. 2020): frozen head; information maximisation + centroid pseudo-labels"
    defaults = {"lr": 0.01, "beta": 0.3, "momentum": 0.9, "weight_decay": 1e-3, "refresh_epochs": 1.0,
                "div_image": 0.1, "div_batch": 1.0, "diversity_prior": "uniform", "encoder_lr_mult": 0.1,
                "centroid_pixels": 256}
    dense_defaults = {"diversity_prior": "shipped"}
    choices = {"diversity_prior": ("shipped", "uniform")}
    option_help = {"diversity_prior": "the class marginal the diversity term pulls towards: the shipped model's "
                                      "mean prediction on the target (segmentation default) or uniform (classification)"}
    default_iters = 300
    tasks = ("classification", "segmentation")

    def build(self) -> None:
        clf, o = self.model, self.opts
        self.pixelwise = task_of(self.task).spatial_output  # per-pixel SHOT (else per image)
        if self.pixelwise:
            frozen = {id(p) for m in hypothesis_layers(clf) for p in m.parameters()}
            for p in clf.parameters():
                p.requires_grad_(id(p) not in frozen)
            groups = [{"params": [p for p in g["params"] if p.requires_grad], "lr": g["lr"], "base_lr": g["lr"]}
                      for g in clf.param_groups(o.lr, o.encoder_lr_mult)]
        else:
            for p in clf.head.parameters():
                p.requires_grad_(False)
            groups = [{"params": list(clf.features.parameters()), "lr": o.lr, "base_lr": o.lr}]
        self.optims["features"] = build_optimizer(groups, "sgd", o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
        self.pseudo: torch.Tensor | None = None
        self.prior: torch.Tensor | None = None
        self._last_refresh = 0

    def prepare(self, target) -> None:
        first = self.prior is None and self.opts.diversity_prior == "shipped"  # the first call: the shipped model
        if self.pixelwise:
            if first:
                self.prior = mean_pixel_probabilities(self.model, target)
            self.pseudo = pixel_pseudo_labels(self.model, target, self.opts.centroid_pixels, self.generator)
        else:
            feats, logits = target.features_logits(self.model)
            if first:
                self.prior = F.softmax(logits, 1).mean(0)
            self.pseudo = centroid_pseudo_labels(feats, logits).to(self.device)

    def refresh_due(self, iteration: int, epoch_iters: int) -> bool:
        every = max(1, round(self.opts.refresh_epochs * epoch_iters))
        if iteration - self._last_refresh >= every:
            self._last_refresh = iteration
            return True
        return False

    def _labels(self, idx: torch.Tensor) -> torch.Tensor:
        y = self.pseudo[idx.to(self.pseudo.device)]
        if self.pixelwise and self.window is not None:
            top, left, h, w = self.window
            y = y[:, top:top + h, left:left + w]
        return y.to(self.device).long()

    def step(self, x: torch.Tensor, idx: torch.Tensor | None = None) -> dict[str, float]:
        clf, o = self.model, self.opts
        clf.train()
        scale = (1 + 10 * self.progress) ** -0.75
        for g in self.optims["features"].param_groups:
            g["lr"] = g["base_lr"] * scale
        with self.autocast():
            logits = clf(x)
        if self.pixelwise:
            ent, div_img, div = pixel_information_maximisation_terms(logits, prior=self.prior)
            loss = ent - (o.div_image * div_img + o.div_batch * div)
            out = {"entropy": float(ent.detach()), "div_image": float(div_img.detach()), "diversity": float(div.detach())}
        else:
            if self.prior is None:
                ent, div = information_maximisation_terms(logits)
            else:  # one prediction per image is a 1 x 1 frame: -KL(mean p || prior)
                ent, _, div = pixel_information_maximisation_terms(logits[:, :, None, None], prior=self.prior)
            loss = ent - div
            out = {"entropy": float(ent.detach()), "diversity": float(div.detach())}
        if o.beta > 0 and self.pseudo is not None and idx is not None:
            y = self._labels(idx)
            ce = class_balanced_cross_entropy(logits, y) if self.pixelwise else F.cross_entropy(logits.float(), y)
            loss = loss + o.beta * ce
            out["pseudo_ce"] = float(ce.detach())
        self.update(loss, "features")
        return out

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

Defaults (the paper's): beta = 0.3; SGD, lr 0.01 with lr_p = lr (1 + 10 p)^-0.75, momentum 0.9,
Nesterov, weight decay 5e-4; epsilon 1e-5 in the diversity term; 300 iterations unless
``--iters`` says otherwise.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import ADAPT_METHODS, AdaptMethod
from ..scores import information_maximisation_terms


def centroid_pseudo_labels(features: torch.Tensor, logits: torch.Tensor, rounds: int = 1, min_count: int = 0) -> torch.Tensor:
    """SHOT's pseudo-labels: soft-weighted centroids, then ``rounds`` hard k-means refinements.

    ``features``: (N, d), ``logits``: (N, K) of the current model. Returns (N,) int64 labels.
    """
    f = torch.cat([features.float(), torch.ones(len(features), 1)], 1)
    f = F.normalize(f, dim=1)
    p = F.softmax(logits.float(), 1)
    cent = (p.t() @ f) / (p.sum(0)[:, None] + 1e-8)
    labels = (f @ F.normalize(cent, dim=1).t()).argmax(1)
    k = logits.shape[1]
    for _ in range(rounds):
        onehot = F.one_hot(labels, k).float()
        counts = onehot.sum(0)
        cent = (onehot.t() @ f) / (counts[:, None] + 1e-8)
        sim = f @ F.normalize(cent, dim=1).t()
        sim[:, counts <= min_count] = -float("inf")  # classes nobody was assigned to take no labels
        labels = sim.argmax(1)
    return labels


@ADAPT_METHODS.register("shot")
class Shot(AdaptMethod):
    summary = "SHOT (Liang et al. 2020): frozen head; information maximisation + centroid pseudo-labels"
    defaults = {"lr": 0.01, "beta": 0.3, "momentum": 0.9, "weight_decay": 5e-4, "refresh_epochs": 1.0}
    default_iters = 300

    def build(self) -> None:
        clf = self.classifier
        for p in clf.head.parameters():
            p.requires_grad_(False)
        o = self.opts
        self.optims["features"] = torch.optim.SGD(clf.features.parameters(), lr=o["lr"], momentum=o["momentum"],
                                                  weight_decay=o["weight_decay"], nesterov=o["momentum"] > 0)
        self.pseudo: torch.Tensor | None = None
        self._last_refresh = 0

    def prepare(self, target) -> None:
        feats, logits = target.features_logits(self.classifier)
        self.pseudo = centroid_pseudo_labels(feats, logits).to(self.device)

    def refresh_due(self, iteration: int, epoch_iters: int) -> bool:
        every = max(1, round(self.opts["refresh_epochs"] * epoch_iters))
        if iteration - self._last_refresh >= every:
            self._last_refresh = iteration
            return True
        return False

    def step(self, x: torch.Tensor, idx: torch.Tensor | None = None) -> dict[str, float]:
        clf = self.classifier
        clf.train()
        lr = self.opts["lr"] * (1 + 10 * self.progress) ** -0.75
        for g in self.optims["features"].param_groups:
            g["lr"] = lr
        with self.autocast():
            logits = clf(x)
        ent, div = information_maximisation_terms(logits)
        loss = ent - div
        out = {"entropy": float(ent.detach()), "diversity": float(div.detach())}
        if self.opts["beta"] > 0 and self.pseudo is not None and idx is not None:
            ce = F.cross_entropy(logits.float(), self.pseudo[idx.to(self.device)])
            loss = loss + self.opts["beta"] * ce
            out["pseudo_ce"] = float(ce.detach())
        self.update(loss, "features")
        return out

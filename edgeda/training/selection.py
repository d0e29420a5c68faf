"""Unsupervised model selection: validators that score a checkpoint without target labels.

Each validator maps what the trainer can see at an evaluation (source validation accuracy, the
model's outputs and features on the unlabeled target adaptation split) to a score, higher is
better. Every registered validator is computed at every evaluation and logged as ``score/<name>``
in ``metrics.jsonl``, so benchmarks can check how well each one's pick matches the (hidden)
target accuracy. ``--select NAME`` ships the checkpoint with the best score; ``last`` ships the end.

Confidence scores (``entropy``, ``info_max``, ``snd``, ``bnm``) reward confident, clustered
outputs whether or not the classes line up, so a method that aligns the wrong classes can score
best. ``dev`` and ``reverse`` check the target predictions against labeled source images through
the model's features; ``agreement`` checks them against a source-only model. A validator that
cannot score a context (no target data, no per-image source labels for a dense task, no reference
model) raises ``ValueError`` and is left out of that evaluation's record.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..registry import Registry
from ..scores import information_maximisation, probs_entropy


@dataclass
class EvalContext:
    source_val: float  # the task's source-validation score, oriented so that higher is better
    target_logits: torch.Tensor | None = None  # (N, K) on the target adaptation split (dense: sampled pixels)
    target_features: torch.Tensor | None = None  # (N, d)
    # labeled source-validation rows (classification): DEV and reverse validation need them
    source_logits: torch.Tensor | None = None  # (M, K)
    source_features: torch.Tensor | None = None  # (M, d)
    source_labels: torch.Tensor | None = None  # (M,)
    # the source-only model's logits on the same target rows (the ``agreement`` validator's reference)
    reference_logits: torch.Tensor | None = None  # (N, K)


VALIDATORS: Registry = Registry("validator")


@VALIDATORS.register("source_val")
def source_val(ctx: EvalContext) -> float:
    """The task's score on held-out labeled source images (accuracy, mIoU, or minus abs rel for
    depth): the classic choice, blind to the shift."""
    return ctx.source_val


def selector_names() -> list[str]:
    """``last``, every validator, and ``target_val`` (a small labeled target set, ``--target-val``)."""
    return ["last", *VALIDATORS, "target_val"]


def score_all(ctx: EvalContext) -> dict[str, float]:
    out = {}
    for name, fn in VALIDATORS.items():
        try:
            out[name] = float(fn(ctx))
        except (ValueError, RuntimeError):
            continue  # a validator that cannot score this context (e.g. no target data) is left out
    return out


def _target_probs(ctx: EvalContext) -> torch.Tensor:
    if ctx.target_logits is None or len(ctx.target_logits) == 0 or ctx.target_logits.shape[1] < 2:
        raise ValueError("no target predictions to score")
    return ctx.target_logits.float().softmax(1)


@VALIDATORS.register("entropy")
def entropy(ctx: EvalContext) -> float:
    """Negative mean entropy of the target predictions: confident models score higher (Morerio et al. 2018)."""
    return -float(probs_entropy(_target_probs(ctx)).mean())


@VALIDATORS.register("info_max")
def info_max(ctx: EvalContext) -> float:
    """Information maximisation: H(mean_i p_i) - mean_i H(p_i) (mutual information between input
    and prediction, as in RIM/SHOT): confident per image and diverse over the target set."""
    return information_maximisation(_target_probs(ctx))


@VALIDATORS.register("snd")
def snd(ctx: EvalContext, temperature: float = 0.05, max_n: int = 2000) -> float:
    """Soft neighbourhood density (Saito et al., "Tune it the Right Way", ICCV 2021).

    Target softmax outputs are L2-normalised, their cosine similarity matrix (self-similarity
    removed) is softmax-normalised per row at temperature 0.05, and the score is the mean row
    entropy: high when predictions form dense neighbourhoods (clusters) rather than being
    isolated. Higher is better. At most ``max_n`` images are scored (the first ones: a fixed set).
    """
    p = torch.nn.functional.normalize(_target_probs(ctx)[:max_n], dim=1)
    n = p.shape[0]
    if n < 2:
        raise ValueError("SND needs at least two target images")
    sim = p @ p.T
    sim = sim.masked_fill(torch.eye(n, dtype=torch.bool, device=sim.device), float("-inf"))
    q = (sim / temperature).softmax(1)
    return float(probs_entropy(q).mean())


@VALIDATORS.register("bnm")
def bnm(ctx: EvalContext, max_n: int = 2000) -> float:
    """Batch nuclear-norm maximisation (Cui et al., "Towards Discriminability and Diversity", CVPR
    2020) as a score: ||P||_* / N of the target probability matrix P (N, K). Large when predictions
    are confident and spread over many classes. Can detect: collapse to few classes, uncertain
    outputs. Cannot detect: confident, diverse but wrongly aligned classes (a class swap scores the same)."""
    p = _target_probs(ctx)[:max_n]
    return float(torch.linalg.svdvals(p.double()).sum() / p.shape[0])


def _labeled_source(ctx: EvalContext):
    if ctx.source_features is None or ctx.source_labels is None or ctx.source_logits is None or len(ctx.source_labels) < 2:
        raise ValueError("needs per-image labeled source-validation features (classification only)")
    if ctx.target_features is None or len(ctx.target_features) < 2:
        raise ValueError("needs target features")
    return ctx.source_features.float(), ctx.source_logits.float(), ctx.source_labels.long(), ctx.target_features.float()


def _standardise(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    both = torch.cat([a, b])
    mu, sd = both.mean(0), both.std(0).clamp_min(1e-6)
    return (a - mu) / sd, (b - mu) / sd


def _fit_linear(x: torch.Tensor, y: torch.Tensor, k: int, weight_decay: float = 1e-3, steps: int = 100) -> torch.nn.Linear:
    """Multinomial logistic regression by L-BFGS (deterministic: zero init, full batch)."""
    lin = torch.nn.Linear(x.shape[1], k).double()
    torch.nn.init.zeros_(lin.weight), torch.nn.init.zeros_(lin.bias)
    x, y = x.double(), y.long()
    opt = torch.optim.LBFGS(lin.parameters(), lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(lin(x), y) + weight_decay * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return lin


@VALIDATORS.register("dev")
def dev(ctx: EvalContext, max_n: int = 2000) -> float:
    """Deep embedded validation (You et al., "Towards Accurate Model Selection in Deep Unsupervised
    Domain Adaptation", ICML 2019), as minus the DEV risk (higher is better).

    A logistic domain classifier on the model's features (source validation vs target) gives the
    density ratio w(x) = (n_s / n_t) p(t|x) / p(s|x) on the source-validation images; the weighted
    losses L_i = w_i * CE_i estimate the target risk, and the control variate
    eta = -Cov(L, w) / Var(w) reduces its variance: R = mean(L) + eta * mean(w) - eta.
    Can detect: a model wrong on the source images that look like the target (a class swap the
    features carry over to source). Cannot detect: errors on target regions with no source
    support, or a swap that lives only on target features; high variance when domains separate.
    """
    fs, ls, ys, ft = _labeled_source(ctx)
    fs, ls, ys, ft = fs[:max_n], ls[:max_n], ys[:max_n], ft[:max_n]
    a, b = _standardise(fs, ft)
    d = _fit_linear(torch.cat([a, b]), torch.cat([torch.zeros(len(a)), torch.ones(len(b))]), 2, weight_decay=1e-2)
    with torch.no_grad():
        lp = d(a.double()).log_softmax(1)
        w = (lp[:, 1] - lp[:, 0]).exp() * (len(a) / len(b))
        loss = torch.nn.functional.cross_entropy(ls.double(), ys, reduction="none")
        wl = w * loss
        var = w.var()
        eta = -(torch.mean((wl - wl.mean()) * (w - w.mean())) / var) if var > 1e-12 else torch.tensor(0.0, dtype=w.dtype)
        risk = wl.mean() + eta * w.mean() - eta
    return -float(risk)


@VALIDATORS.register("reverse")
def reverse_validation(ctx: EvalContext, max_n: int = 2000) -> float:
    """Reverse validation (Zhong et al. 2010, as Ganin et al. 2016 used for DANN): a reverse
    classifier (logistic regression on the model's features) is trained on the target images with
    the model's pseudo-labels and scored on the labeled source-validation images (accuracy).
    Can detect: target pseudo-labels that disagree with what the same features mean on source
    (a confident class swap on aligned features). Cannot detect: errors shared by source and
    target, or features that separate the domains (the reverse classifier then transfers badly
    for every candidate, which lowers all scores alike)."""
    fs, _, ys, ft = _labeled_source(ctx)
    if ctx.target_logits is None or len(ctx.target_logits) != len(ctx.target_features):
        raise ValueError("needs target predictions for every target feature row")
    fs, ys = fs[:max_n], ys[:max_n]
    ft, pseudo = ft[:max_n], ctx.target_logits[:max_n].argmax(1)
    b, a = _standardise(ft, fs)
    k = int(max(ctx.target_logits.shape[1], int(ys.max()) + 1))
    lin = _fit_linear(b, pseudo, k)
    with torch.no_grad():
        return float((lin(a.double()).argmax(1) == ys).double().mean())


@VALIDATORS.register("agreement")
def agreement(ctx: EvalContext, top_fraction: float = 0.3) -> float:
    """Agreement with the source-only model on the target images it is most confident about: the
    fraction of the ``top_fraction`` most confident rows of the reference (per reference class, so
    every class counts) where the candidate predicts the same class. Can detect: a method that moves
    predictions the source-only model was sure of (a class swap introduced by alignment). Cannot
    detect: the reference's own confident errors, which it rewards keeping; it caps the credit for
    fixing them. Needs the reference logits (``edgeda train --method auto`` and the shift suite
    provide them); dense rows work the same way."""
    if ctx.reference_logits is None:
        raise ValueError("needs the source-only model's target predictions")
    p = _target_probs(ctx)
    ref = ctx.reference_logits.float().softmax(1)
    if ref.shape != p.shape:
        raise ValueError("reference and candidate target rows differ in shape")
    conf, rc = ref.max(1)
    keep = []
    for c in rc.unique():
        idx = torch.nonzero(rc == c).flatten()
        n = max(1, int(round(top_fraction * len(idx))))
        keep.append(idx[conf[idx].argsort(descending=True)[:n]])
    keep = torch.cat(keep)
    return float((p[keep].argmax(1) == rc[keep]).float().mean())

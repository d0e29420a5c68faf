"""Losses of the source-free methods, each written once.

``virtual_adversarial_loss`` (the VAT term of 3C-GAN's
clustering regulariser) only needs target images and the model being adapted; SHOT's
information-maximisation terms are :func:`edgeda.scores.information_maximisation_terms` for one
prediction per image and :func:`pixel_information_maximisation_terms` per pixel;
:func:`class_balanced_cross_entropy` is the self-training term on per-pixel pseudo-labels and
:func:`class_balanced_soft_cross_entropy` its form for soft targets (CoTTA on segmentation).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..data.dense import IGNORE_INDEX
from ..scores import entropy


def kl_divergence(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """Mean KL(softmax(p) || softmax(q)) over the batch."""
    logp = F.log_softmax(p_logits.float(), 1)
    logq = F.log_softmax(q_logits.float(), 1)
    return (logp.exp() * (logp - logq)).sum(1).mean()


def _unit(d: torch.Tensor) -> torch.Tensor:
    return d / (d.flatten(1).norm(dim=1).view(-1, *([1] * (d.dim() - 1))) + 1e-12)


def virtual_adversarial_loss(model: nn.Module, x: torch.Tensor, logits: torch.Tensor, *, radius: float = 1.0,
                             xi: float = 1e-6, power_iterations: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
    """KL(C(x) || C(x + r_adv)) with r_adv = radius * unit(g), g found by power iteration (Miyato et al. 2018).

    ``logits`` = C(x) (treated as the fixed target distribution); ``radius`` is in the model's
    normalised input units. The returned loss is differentiable w.r.t. the model parameters.

    >>> loss = virtual_adversarial_loss(clf, x_t, clf(x_t), radius=1.0)
    """
    target = logits.detach()
    d = torch.randn(x.shape, generator=generator).to(x.device)
    for _ in range(power_iterations):
        d = (xi * _unit(d)).requires_grad_(True)
        dist = kl_divergence(target, model(x.detach() + d))
        d = torch.autograd.grad(dist, d)[0].detach()
    r_adv = radius * _unit(d)
    return kl_divergence(target, model(x.detach() + r_adv))


def pixel_information_maximisation_terms(logits: torch.Tensor, eps: float = 1e-5, prior: torch.Tensor | None = None
                                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Information maximisation over the pixels of (N, K, H, W) logits, p = softmax over K:

        L_ent       = E_{n,u}[ H(p_{n,u}) ]               (each pixel confident)
        L_div_image = E_n[ H(mean_u p_{n,u}) ]           (each frame's class marginal diverse)
        L_div_batch = H(mean_{n,u} p_{n,u})              (the batch's class marginal diverse)

    with H(q) = -sum_k q_k log(q_k + eps) for the marginals. Minimise
    ``L_ent - (w_image L_div_image + w_batch L_div_batch)``. With a class ``prior`` pi (K,), the
    batch term is ``-KL(mean p || pi) = -sum_k q_k log((q_k + eps) / pi_k)`` instead: diverse
    relative to pi rather than to uniform classes (a uniform pi gives H(q) - log K, the same
    gradient as the plain term).

    >>> ent, div_img, div_batch = pixel_information_maximisation_terms(model(x))
    """
    p = F.softmax(logits.float(), 1)
    image_marginal = p.mean((2, 3))  # (N, K)
    batch_marginal = image_marginal.mean(0)
    div_image = -(image_marginal * torch.log(image_marginal + eps)).sum(1).mean()
    if prior is None:
        div_batch = -(batch_marginal * torch.log(batch_marginal + eps)).sum()
    else:
        prior = prior.to(batch_marginal.device, batch_marginal.dtype)
        div_batch = -(batch_marginal * (torch.log(batch_marginal + eps) - torch.log(prior + eps))).sum()
    return entropy(logits, 1).mean(), div_image, div_batch


def class_balanced_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX
                                 ) -> torch.Tensor:
    """Cross-entropy averaged per class, then over the classes present in ``labels``:

        L = (1 / |K'|) sum_{k in K'} mean_{i : y_i = k} CE(p_i, k),    K' = classes with a labelled pixel

    so a class covering few pixels weighs as much as the background (each class's mean, not each
    pixel's). ``logits`` (N, K[, H, W]), ``labels`` (N[, H, W]) int, ``ignore_index`` skipped.

    >>> loss = class_balanced_cross_entropy(model(x), pseudo_labels)
    """
    k = logits.shape[1]
    ce = F.cross_entropy(logits.float(), labels.long(), ignore_index=ignore_index, reduction="none").reshape(-1)
    lab = labels.reshape(-1).long()
    valid = lab != ignore_index
    if not bool(valid.any()):
        return logits.sum() * 0.0
    return per_class_mean(ce[valid], lab[valid], k)


def class_balanced_soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The soft cross-entropy -sum_c y_c log p_c of each row (image or pixel) averaged per class of
    the targets' arg-max, then over the classes present:

        L = (1 / |K'|) sum_{k in K'} mean_{i : argmax y_i = k} (-sum_c y_ic log p_ic)

    ``logits`` and ``targets`` (N, K[, H, W]), ``targets`` rows summing to 1. With one class per
    row this is :func:`class_balanced_cross_entropy`; a class covering few pixels weighs as much
    as the background, so self-training on frames that are mostly background does not pull the
    few object pixels into it.

    >>> loss = class_balanced_soft_cross_entropy(student(x), teacher_probs)
    """
    ce = -(targets.float() * F.log_softmax(logits.float(), 1)).sum(1)
    return per_class_mean(ce.reshape(-1), targets.argmax(1).reshape(-1), logits.shape[1])


def per_class_mean(values: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """The mean of ``values`` within each of the ``k`` classes of ``labels`` (both flat, same length),
    then over the classes present: each class weighs alike however many rows it covers."""
    sums = torch.zeros(k, device=values.device, dtype=values.dtype).scatter_add(0, labels.long(), values)
    counts = torch.bincount(labels.long(), minlength=k)
    present = counts > 0
    return (sums[present] / counts[present]).mean()

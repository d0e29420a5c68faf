"""Losses shared by several methods. Each is one function, written once."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models.layers import gradient_reversal
from ..scores import entropy  # noqa: F401  (re-exported: methods import it from here)


def domain_adversarial_loss(
    discriminator: nn.Module, source_features: torch.Tensor, target_features: torch.Tensor, coeff: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """DANN's domain loss through gradient reversal (Ganin & Lempitsky 2015).

    L_d = BCE(D(R_c(f_s)), 1) + BCE(D(R_c(f_t)), 0), where R_c is identity forward and -c * grad
    backward: D minimises L_d while the feature extractor maximises it, in one backward pass.
    Returns (loss, domain accuracy of D). Shapes: features (N, d).

    >>> d = DomainClassifier(256); loss, acc = domain_adversarial_loss(d, fs, ft, coeff=0.3)
    """
    f = torch.cat([source_features, target_features])
    logits = discriminator(gradient_reversal(f, coeff)).float()
    labels = torch.cat([torch.ones(len(source_features)), torch.zeros(len(target_features))]).to(logits.device)
    loss = F.binary_cross_entropy_with_logits(logits, labels)
    acc = ((logits > 0).float() == labels).float().mean()
    return loss, acc


def scale_invariant_mse(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Scale-invariant MSE (Eigen et al. 2014; the DSN reconstruction loss, Bousmalis et al. 2016).

    Per sample with k pixels and diff = x - x_hat: L = ||diff||^2 / k - (sum diff)^2 / k^2,
    averaged over the batch. It ignores a constant offset of the whole image, so the decoder
    learns shape rather than absolute intensity. Shapes: (N, ...) both.
    """
    diff = (x.float() - x_hat.float()).flatten(1)
    k = diff.shape[1]
    return (diff.pow(2).sum(1) / k - diff.sum(1).pow(2) / (k * k)).mean()


def difference_loss(shared: torch.Tensor, private: torch.Tensor) -> torch.Tensor:
    """DSN soft orthogonality (Bousmalis et al. 2016): ||H_c^T H_p||_F^2, averaged over entries.

    Rows of ``shared`` (N, d_c) and ``private`` (N, d_p) are L2-normalised first (as in the
    authors' implementation), so the loss is in [0, 1] per entry and zero exactly when every
    shared column is orthogonal to every private column across the batch.
    """
    hc = F.normalize(shared.float(), dim=1)
    hp = F.normalize(private.float(), dim=1)
    return (hc.T @ hp).pow(2).mean()


def info_nce(query: torch.Tensor, positive_key: torch.Tensor, negatives: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """InfoNCE (van den Oord et al. 2018) with a bank of negatives, as in MoCo (He et al. 2020).

    L = -mean_i log( exp(q_i.k_i / T) / (exp(q_i.k_i / T) + sum_j exp(q_i.n_j / T)) ) with q, k, n
    L2-normalised. Shapes: query/positive_key (N, d), negatives (M, d). Lower when each query
    is closer to its own key than to the negatives.

    >>> loss = info_nce(student_proj, frozen_proj.detach(), queue)  # (N, 128), (N, 128), (M, 128)
    """
    q = F.normalize(query.float(), dim=1)
    k = F.normalize(positive_key.float(), dim=1)
    n = F.normalize(negatives.float(), dim=1)
    pos = (q * k).sum(1, keepdim=True)
    logits = torch.cat([pos, q @ n.T], 1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """SimCLR's contrastive loss with the other pairs of the batch as negatives (Chen et al. 2020).

    With z1, z2 (N, d) L2-normalised projections of two views of N images:
    L = 1/2 [CE(z1 z2^T / T, diag) + CE(z2 z1^T / T, diag)], i.e. each view must pick its partner
    among the N views of the other side. Lower when the pairs match; log N for unrelated ones.

    >>> loss = nt_xent(head(encoder(view_a)), head(encoder(view_b)))
    """
    a, b = F.normalize(z1.float(), dim=1), F.normalize(z2.float(), dim=1)
    logits = a @ b.T / temperature
    labels = torch.arange(len(a), device=a.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def edge_aware_smoothness(depth: torch.Tensor, image: torch.Tensor, log_depth: bool = False) -> torch.Tensor:
    """Edge-aware depth smoothness (Godard et al. 2017; T2Net's L_s on real images, Zheng et al. 2018).

    With d = D / mean(D) per image (so the loss does not shrink by predicting smaller depths) and
    image gradients averaged over channels:
    L = mean |d_x d| e^{-|d_x I|} + mean |d_y d| e^{-|d_y I|}. Zero for a constant depth; depth edges
    cost less where the image has an edge. Shapes: depth (N, 1, H, W) or (N, H, W), image (N, C, H, W).

    ``log_depth``: ``depth`` is log-depth; its gradients are then taken as they are (log d is
    scale-invariant already, and stays finite where d would overflow).

    >>> loss = edge_aware_smoothness(model(x_t), x_t)
    """
    d = depth.float() if depth.dim() == 4 else depth.float().unsqueeze(1)
    if not log_depth:
        d = d / d.mean((1, 2, 3), keepdim=True).clamp_min(1e-6)
    img = image.float()
    ddx, ddy = (d[..., :, 1:] - d[..., :, :-1]).abs(), (d[..., 1:, :] - d[..., :-1, :]).abs()
    idx = (img[..., :, 1:] - img[..., :, :-1]).abs().mean(1, keepdim=True)
    idy = (img[..., 1:, :] - img[..., :-1, :]).abs().mean(1, keepdim=True)
    return (ddx * torch.exp(-idx)).mean() + (ddy * torch.exp(-idy)).mean()

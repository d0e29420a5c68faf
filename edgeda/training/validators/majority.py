"""The ``majority`` validator."""
from __future__ import annotations

import torch

from .context import VALIDATORS, EvalContext, box_agreement, label_agreement, label_confusion, mean_iou, target_probs


def majority_vote(logits: list[torch.Tensor]) -> torch.Tensor:
    """Per row, the class most of ``logits`` (each (N, K)) predict; ties go to the class with the larger
    summed probability. The probabilities are only computed on the tied rows (on dense outputs, most
    rows are not: a pool of 15 candidates' class maps over 32 frames took minutes with them everywhere)."""
    n, k = logits[0].shape
    votes = torch.zeros(n, k, dtype=torch.int64, device=logits[0].device)
    ones = torch.ones(n, 1, dtype=torch.int64, device=votes.device)
    for z in logits:
        votes.scatter_add_(1, z.argmax(1, keepdim=True), ones)
    out = votes.argmax(1)
    tied = ((votes == votes.max(1, keepdim=True).values).sum(1) > 1).nonzero().flatten()
    if len(tied):  # summed probabilities / (P + 1) < 1: they only choose among the classes with the most votes
        soft = sum(z[tied].float().softmax(1).double() for z in logits) / (len(logits) + 1)
        out[tied] = (votes[tied].double() + soft).argmax(1)
    return out


@VALIDATORS.register("majority")
def majority(ctx: EvalContext, min_peers: int = 2) -> float:
    """Agreement with the other candidates' majority vote on the same target rows (pixel-wise for dense
    tasks): the mIoU between the candidate's labeling and the vote for dense tasks, the fraction of
    rows where they agree for classification; each candidate is compared with the vote of the others.

    Can detect: a candidate that went its own way when the others agree (collapse, a class swap one
    method introduced). Cannot detect: errors most candidates share (the vote then rewards them), and it
    ranks by consensus, so a lone candidate that truly fixed the shift scores low. Needs at least two
    other candidates scored on the same rows (``--method auto`` and the shift suites pass them through
    :func:`edgeda.training.validators.score_candidates`).

    Detectors have no rows to vote on: the candidate's mean, over the other candidates, of its
    :func:`box_agreement` with each (its average precision at IoU 0.5 against the boxes that candidate
    is sure of), so the boxes most candidates find count most; a candidate sure of no box is left out."""
    if ctx.target_detections is not None:
        scores = []
        for dets in ctx.peer_detections.values():
            try:
                scores.append(box_agreement(ctx.target_detections, dets, ctx.classes or []))
            except ValueError:
                continue  # that candidate is sure of no box: nothing to agree with
        if len(scores) < min_peers:
            raise ValueError(f"needs the target detections of at least {min_peers} other candidates sure of some box")
        return float(sum(scores) / len(scores))
    peers = [z for z in ctx.peer_logits.values() if z is not None]
    if len(peers) < min_peers:
        raise ValueError(f"needs the target predictions of at least {min_peers} other candidates")
    p = target_probs(ctx)
    if any(z.shape != p.shape for z in peers):
        raise ValueError("the candidates' target rows differ in shape")
    vote = majority_vote(peers)
    conf = label_confusion(p.argmax(1), vote, p.shape[1])
    return mean_iou(conf) if ctx.dense else label_agreement(conf)

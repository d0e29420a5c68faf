"""The ``snd`` validator."""
from __future__ import annotations

import torch

from ...scores import probs_entropy
from .context import VALIDATORS, EvalContext, target_probs


@VALIDATORS.register("snd")
def snd(ctx: EvalContext, temperature: float = 0.05, max_n: int = 2000) -> float:
    """Soft neighbourhood density (Saito et al., "Tune it the Right Way", ICCV 2021).

    Target softmax outputs are L2-normalised, their cosine similarity matrix (self-similarity
    removed) is softmax-normalised per row at temperature 0.05, and the score is the mean row
    entropy: high when predictions form dense neighbourhoods (clusters) rather than being
    isolated. Higher is better. At most ``max_n`` images are scored (the first ones: a fixed set).
    """
    p = torch.nn.functional.normalize(target_probs(ctx)[:max_n], dim=1)
    n = p.shape[0]
    if n < 2:
        raise ValueError("SND needs at least two target images")
    sim = p @ p.T
    sim = sim.masked_fill(torch.eye(n, dtype=torch.bool, device=sim.device), float("-inf"))
    q = (sim / temperature).softmax(1)
    return float(probs_entropy(q).mean())

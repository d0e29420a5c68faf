"""The ``info_max_prior`` validator."""
from __future__ import annotations

import torch

from ...scores import kl_to_prior, probs_entropy
from .context import VALIDATORS, EvalContext, target_probs


def information_maximisation_prior(p: torch.Tensor, prior: torch.Tensor) -> float:
    """-KL(mean_i p_i || pi) - mean_i H(p_i) of class probabilities ``p`` (N, K) against a class prior
    ``pi`` (K,): information maximisation whose diversity term rewards matching pi, not uniformity
    (with pi uniform it equals H(mean p) - mean H(p) - log K)."""
    pi = torch.as_tensor(prior, dtype=torch.float64).flatten()
    if pi.numel() != p.shape[1]:
        raise ValueError(f"the class prior has {pi.numel()} entries for {p.shape[1]} classes")
    return -kl_to_prior(p.double().mean(0), pi) - float(probs_entropy(p.double()).mean())


@VALIDATORS.register("info_max_prior")
def info_max_prior(ctx: EvalContext) -> float:
    """Information maximisation against the source label marginal: -KL(mean_i p_i || pi) - mean_i H(p_i),
    with pi the class frequencies of the labeled source-validation set.

    ``info_max``'s diversity term H(mean p) pushes towards uniform class use, which in frames where
    background or road rightly cover most pixels rewards painting them as rare classes; here the
    predicted marginal is compared with the source's instead. Can detect: collapse onto few classes,
    uncertain outputs, a predicted class mix far from the source's. Cannot detect: a class swap
    between classes of similar frequency, or a target whose true class mix differs from the source's
    (it then favours the source mix). Needs ``EvalContext.source_prior``."""
    if ctx.source_prior is None:
        raise ValueError("needs the source label marginal")
    return information_maximisation_prior(target_probs(ctx), ctx.source_prior)

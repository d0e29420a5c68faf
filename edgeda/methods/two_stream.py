"""Two-stream adaptation: related, not shared, weights for the source and target domains."""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..models.alignment import multi_kernel_mmd
from .base import Batch, Method
from .registry import METHODS


@METHODS.register("two_stream")
class TwoStream(Method):
    """Two streams of the same architecture, one per domain, tied by a per-layer weight regulariser.

    Rozantsev, Salzmann & Fua, "Beyond Sharing Weights for Deep Domain Adaptation", TPAMI 2019.

    Source stream S (``nets["source"]``) and target stream T (``nets["model"]``, shipped) start
    from the same initial weights. For every weight/bias tensor l (conv, linear and BatchNorm
    affine) with n_l entries and per-layer scalars a_l, b_l:
        r_l = ||a_l W^S_l + b_l - W^T_l||^2
        L = CE(S(x_s), y_s) + lambda_w * sum_l reg(r_l) + lambda_d * MK-MMD^2(f^S(x_s), f^T(x_t))
    ``reg = square`` (default) uses r_l itself; ``reg = exp`` the paper's exp(r_l) - 1. The squared
    form is the default because the exponential's gradient exp(r_l) * 2 (W^T - a W^S - b) makes
    an SGD step overshoot once r_l grows past a few units on a large layer (it diverges), while
    near r_l = 0 both forms agree. The discrepancy is the same multi-kernel MMD as ``mmd`` (DAN
    bandwidth family). BatchNorm statistics stay per stream: each stream normalises with its own
    domain's statistics.

    a_l and b_l are learned by solving for them at every step instead of by SGD: the least-squares
    fit of W^T_l on W^S_l, ridge-regularised towards (1, 0) with strength 1e-4 n_l (so a constant
    tensor such as an initial BatchNorm scale gets a = 1). By the envelope theorem the gradients
    for the weights are those of the jointly optimised objective; SGD on (a, b) diverges here,
    since their curvature grows with n_l (2 n_l for b: 260k on the FC layer).

    T never sees a label; it learns only through the regulariser (staying a linear transform of
    S, layer by layer) and the MMD term (its target features matching S's source features).

    Defaults: lambda_w = 1.0 (a coupling time constant of 1 / (2 lambda_w lr) steps), reg = square,
    lambda_d = 5.0 (MK-MMD averages its 5 kernels; 5.0 equals the summed-kernel MMD at weight 1
    its benchmark runs were made with), one optimizer over both streams; the trainer's schedule.
    """

    summary = "separate source/target streams tied by per-layer linear weight regularisers (Rozantsev et al. 2019)"
    defaults = {"weight_reg": 1.0, "reg": "square", "mmd_weight": 5.0}
    choices = {"reg": ("exp", "square")}

    def build(self) -> None:
        self.nets["model"] = self.make_model()
        self.nets["source"] = copy.deepcopy(self.nets["model"])  # same start: T = S at iteration 0
        self.pairs = self._tied_parameters()
        self.optims["main"] = self.make_optimizer(self.nets.parameters())

    def _tied_parameters(self) -> list[tuple[str, nn.Parameter, nn.Parameter]]:
        src = dict(self.nets["source"].named_parameters())
        return [(name, src[name], p) for name, p in self.nets["model"].named_parameters()]

    @staticmethod
    def linear_fit(ws: torch.Tensor, wt: torch.Tensor, ridge: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
        """argmin_{a,b} ||a ws + b - wt||^2 + ridge n (a - 1)^2 (no gradient)."""
        with torch.no_grad():
            ws, wt = ws.float().flatten(), wt.float().flatten()
            eps = ridge * ws.numel()
            sc, tc = ws - ws.mean(), wt - wt.mean()
            a = ((sc * tc).sum() + eps) / (sc.pow(2).sum() + eps)
            return a, wt.mean() - a * ws.mean()

    def weight_regulariser(self) -> tuple[torch.Tensor, float]:
        """sum_l reg(r_l) and the mean fitted a_l (for the log)."""
        total, slopes = None, []
        for _, ws, wt in self.pairs:
            a, b = self.linear_fit(ws, wt)
            r = (a * ws + b - wt).pow(2).sum()
            term = torch.expm1(r) if self.opts.reg == "exp" else r
            total = term if total is None else total + term
            slopes.append(float(a))
        return total, sum(slopes) / len(slopes)

    def step(self, source: Batch, target: Batch | None) -> dict[str, float]:
        o = self.opts
        with self.autocast():
            fs, logits_s = self.nets["source"].features_and_logits(source.x)
            ft = self.model.features(target.x)
            cls_loss = F.cross_entropy(logits_s.float(), source.y)
            mmd = multi_kernel_mmd(fs, ft)
            reg, slope = self.weight_regulariser()
            loss = cls_loss + o.weight_reg * reg + o.mmd_weight * mmd
        self.update(loss)
        return {"loss/cls": cls_loss.item(), "loss/mmd": mmd.item(), "loss/weight_reg": reg.item(), "mean_a": slope}

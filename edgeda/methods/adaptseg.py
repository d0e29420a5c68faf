"""AdaptSegNet: adversarial alignment in the output (softmax) space."""
from __future__ import annotations

import torch

from .advent import AdvEnt
from .registry import METHODS


@METHODS.register("adaptseg")
class AdaptSeg(AdvEnt):
    """AdaptSegNet, single level (Tsai, Hung, Schulter, Sohn, Yang & Chandraker, "Learning to Adapt
    Structured Output Space for Semantic Segmentation", CVPR 2018).

    The segmenter's softmax output P = softmax(G(x)) (N, C, H, W) is aligned with a fully
    convolutional discriminator D (source = 0, target = 1):

        L_G = CE(G(x_s), y_s) + lambda_adv * BCE(D(P_t), 0)     (target outputs made to look like source)
        L_D = 1/2 [BCE(D(P_s), 0) + BCE(D(P_t), 1)]              (on detached outputs; D frozen in the G step)

    The training loop, discriminator and optimiser are AdvEnt's (:class:`~edgeda.methods.advent.AdvEnt`,
    which aligns the weighted self-information -P log P instead of P): the two papers share the
    D architecture (4x4 stride-2 convs, 64 .. 512 channels, LeakyReLU 0.2) and its Adam 1e-4 with
    betas (0.9, 0.99). Defaults from the paper's single-level setting: lambda_adv 1e-3. The
    paper's multi-level variant (a second D on an auxiliary classifier of conv4, lambda 2e-4) needs
    DeepLab-v2's auxiliary head, which the dense models here do not have. ``mode=minent`` is not an
    option of this method (it would be AdvEnt's MinEnt).
    """

    summary = "adversarial alignment of the segmenter's softmax outputs (AdaptSegNet, Tsai et al. 2018)"
    defaults = {k: AdvEnt.defaults[k] for k in ("lambda_adv", "lr_d", "d_width", "d_layers")}
    option_help = {k: AdvEnt.option_help[k] for k in ("lambda_adv", "lr_d", "d_width", "d_layers")}
    choices = {}
    minent = False  # AdvEnt's adversarial loop only

    def aligned_map(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits.float(), dim=1)

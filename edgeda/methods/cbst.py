"""CBST: class-balanced self-training for semantic segmentation."""
from __future__ import annotations

import copy

import torch

from ..distributed import broadcast_module
from ..errors import EdgedaError
from .class_balanced import (ConfidenceSample, class_normalised_labels, round_at, round_proportion)
from .base import Batch, Method
from .registry import METHODS


@METHODS.register("cbst")
class CBST(Method):
    """CBST (Zou, Yu, Kumar & Wang, "Unsupervised Domain Adaptation for Semantic Segmentation via
    Class-Balanced Self-Training", ECCV 2018).

    Training runs in rounds. At the start of round r the current segmenter is frozen (a copy, eval
    mode) and predicts on every target adaptation image; for each class c the threshold t_c is the
    confidence of the most confident proportion p_r of the pixels predicted as c
    (:mod:`edgeda.methods.class_balanced`). During the round, with P the frozen model's softmax on
    the target batch,

        y_t = arg-max_c P_c / t_c  where max_c P_c / t_c >= 1, else ignored (255),
        L = CE(G(x_s), y_s) + lambda_target * CE(G(x_t), y_t),

    i.e. the paper's class-normalised pseudo-labels (P_c / exp(-k_c) with k_c = -log t_c). Source and
    target share one forward pass of the segmenter.

    Schedule (the paper's): p = 20% in the first round, +5% a round, at most 50%; ``rounds`` 7 so the
    last round reaches 50%. The rounds split the iteration budget evenly after ``warmup``: with the
    CPU ``syn_seg`` row (lraspp width 1.0, 64x128, batch 8, 1200 iterations from ``--init`` of a
    source-only bundle) a round is ~171 iterations; with ``digits_seg`` (DeepLab ResNet-18 width 0.25,
    64x64, batch 16, Adam 1e-3 constant, 3000 iterations) ~429. The paper alternates labelling the
    whole target set and training a few epochs from an ImageNet/GTA-trained DeepLab; here the row's
    optimizer and schedule apply. ``warmup`` < 0 (default) means: no warm-up when the segmenter
    starts from ``--init`` (the method's usual second stage), else the first third of training is
    source-only, so the first pseudo-labels come from a model that has learnt the task. The rows'
    settings are kept (no ``METHOD_SETTINGS`` entry): a step (segmenter on source + target, frozen
    model on target) took 2.4x a source-only step side by side (lraspp width 1.0, 64x128, batch 8,
    one thread), and each round adds one inference pass over the target split (500 images there).

    Differences from the paper, for streaming data: (1) thresholds are computed once a round on a
    pass over the target adaptation split (un-augmented, in a fixed order, handed over by the trainer
    through :meth:`attach_target_images`) from a seeded sample of ``pixels_per_image`` pixels of each
    image (4096 by default: half of a 64x128 image; memory grows with images, not pixels); (2) the
    pseudo-labels of a training batch are computed on the fly by the frozen round model on that
    (augmented) batch, instead of once per image and then cropped, so no per-image label cache is
    kept. The spatial priors of CBST-SP are not implemented. Round, thresholds and the frozen
    weights are part of the checkpoint, so a resumed run continues the same round.
    """

    summary = "class-balanced self-training: per-class confidence thresholds, rounds of growing proportion (Zou et al. 2018)"
    tasks = ("segmentation",)
    defaults = {"rounds": 7, "p_start": 0.2, "p_step": 0.05, "p_max": 0.5, "lambda_target": 1.0, "warmup": -1.0,
                "pixels_per_image": 4096}
    option_help = {
        "rounds": "self-training rounds, evenly spaced over the iterations after the warm-up",
        "p_start": "proportion of each class's most confident target pixels kept in the first round",
        "p_step": "increase of that proportion every round",
        "p_max": "largest proportion",
        "lambda_target": "weight of the pseudo-label cross-entropy on target images",
        "warmup": "source-only fraction of training before the first round; < 0: 0 from --init, else 1/3",
        "pixels_per_image": "pixels sampled per target image for the thresholds (0: all)",
    }

    def build(self) -> None:
        o = self.opts
        if o.rounds < 1:
            raise EdgedaError(f"method 'cbst' option rounds={o.rounds} must be at least 1")
        for key in ("p_start", "p_max"):
            if not 0.0 < o[key] <= 1.0:
                raise EdgedaError(f"method 'cbst' option {key}={o[key]} must be in (0, 1]")
        if o.warmup >= 1.0:
            raise EdgedaError(f"method 'cbst' option warmup={o.warmup} must be below 1 (a fraction of training)")
        self.nets["model"] = self.make_model()
        self.optims["main"] = self.make_optimizer(self.model.parameters())
        self.from_init = False
        self.round = -1
        self.thresholds = torch.ones(self.task.num_classes)
        self.frozen: torch.nn.Module | None = None

    def load_init(self, path: str) -> None:
        super().load_init(path)
        self.from_init = True

    @property
    def warmup(self) -> float:
        w = self.opts.warmup
        return w if w >= 0 else (0.0 if self.from_init else 1 / 3)

    def proportion(self, round_index: int) -> float:
        o = self.opts
        return round_proportion(round_index, o.p_start, o.p_step, o.p_max)

    # -- rounds -----------------------------------------------------------------------------------
    @torch.no_grad()
    def start_round(self, round_index: int, target: Batch | None = None) -> None:
        """Freeze the current segmenter and set this round's class thresholds from its predictions on
        the target adaptation images (without them, e.g. outside the trainer, on ``target``)."""
        frozen = copy.deepcopy(self.model).eval().requires_grad_(False)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            broadcast_module(frozen)  # BatchNorm statistics drift apart between ranks: every rank labels with rank 0's
        seed = int(getattr(self, "target_seed", 0))
        sample = ConfidenceSample(self.task.num_classes, self.opts.pixels_per_image,
                                  torch.Generator().manual_seed(seed * 1009 + round_index))
        batches = self.target_images() if self.target_images is not None else ([target.x] if target is not None else [])
        for x in batches:
            with self.autocast():
                sample.add(frozen(x).float().softmax(1))
        if not len(sample):
            raise EdgedaError("cbst needs target images to set its class thresholds (--target)")
        self.frozen, self.round = frozen, round_index
        self.thresholds = sample.thresholds(self.proportion(round_index))

    def step(self, source: Batch, target: Batch | None) -> dict[str, float]:
        if target is None:
            raise EdgedaError("cbst trains on target images: give --target")
        r = round_at(self.progress, self.opts.rounds, self.warmup)
        if r >= 0 and (r != self.round or self.frozen is None):
            self.start_round(r, target)
        ns = len(source)
        if r < 0:  # warm-up: the source task alone
            with self.autocast():
                seg = self.task_loss_of(self.model(source.x), source.y)
            self.update(seg)
            return {"loss/seg": seg.item(), "cbst/round": -1.0}
        with torch.no_grad(), self.autocast():
            probs = self.frozen(target.x).float().softmax(1)
        labels, kept = class_normalised_labels(probs, self.thresholds)
        with self.autocast():
            logits = self.model(torch.cat([source.x, target.x]))
            seg = self.task_loss_of(logits[:ns], source.y)
            tgt = self.task_loss_of(logits[ns:], labels) if bool(kept.any()) else logits.new_zeros(()).float()
        self.update(seg + self.opts.lambda_target * tgt)
        return {"loss/seg": seg.item(), "loss/target": tgt.item(), "cbst/round": float(r),
                "cbst/proportion": self.proportion(r), "cbst/labelled": kept.float().mean().item()}

    # -- checkpoint -------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        state = {**super().state_dict(), "cbst_round": self.round, "cbst_thresholds": self.thresholds.clone(),
                 "cbst_from_init": self.from_init}
        if self.frozen is not None:
            state["cbst_frozen"] = self.frozen.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.round = int(state.get("cbst_round", -1))
        self.from_init = bool(state.get("cbst_from_init", self.from_init))
        if "cbst_thresholds" in state:
            self.thresholds = state["cbst_thresholds"].float().cpu()
        self.frozen = None
        if "cbst_frozen" in state:
            self.frozen = copy.deepcopy(self.model).eval().requires_grad_(False)
            self.frozen.load_state_dict(state["cbst_frozen"])

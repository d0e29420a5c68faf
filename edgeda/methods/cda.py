"""Curriculum domain adaptation: first the easy tasks (label distributions, landmark superpixels), then segmentation."""
from __future__ import annotations

import torch

from ..data.dense import IGNORE_INDEX
from ..errors import EdgedaError
from ..models.superpixels import (LabelDistributionRegressor, class_fractions, label_distribution_kl, landmark_labels,
                                  predicted_label_distribution, slic_superpixels, soft_cross_entropy)
from .base import Batch, Method
from .registry import METHODS


@METHODS.register("cda")
class CurriculumDA(Method):
    """Curriculum domain adaptation (Zhang, David & Gong, "Curriculum Domain Adaptation for Semantic
    Segmentation of Urban Scenes", ICCV 2017).

    Easy tasks first, to infer properties of the target domain; then the segmenter is trained so
    that its target predictions follow them (:mod:`edgeda.models.superpixels`):

    1. Global label distribution. A multinomial logistic regression R on the global mean of the
       encoder's final map phi(x) is trained on source images against their true label
       distributions q_s (pixel fraction per class, 255 excluded):
       L_R = -sum_c q_s,c log softmax(R(phi(x_s)))_c, on detached features (R does not shape the
       encoder). Its estimate for a target image is q_t = softmax(R(phi(x_t))). This is the paper's
       logistic-regression estimator, here on the segmenter's own features instead of those of a
       separate ImageNet network.
    2. Landmark superpixels. SLIC superpixels (``n_segments``, ``compactness``) of each target image;
       a superpixel's class is the majority of the segmenter's per-pixel arg-max predictions and its
       confidence the mean probability of that class over its pixels; the ceil(``landmark_fraction``
       * n_c) most confident of the n_c superpixels of class c in the batch are landmarks, their
       pixels labelled y_sp = their class, every other pixel ignored (255). Simplification: the
       paper classifies superpixels with an SVM trained on source superpixel features; here the
       segmenter's own confident majority vote labels them.
    3. Segmentation, with p_t = mean over pixels of softmax(G(x_t)):

           L = CE(G(x_s), y_s) + lambda_kl * KL(q_t || p_t) + lambda_sp * CE(G(x_t), y_sp)

       (q_t and y_sp detached; KL differs from the paper's cross-entropy C(q_t, p_t) by the entropy
       of q_t, a constant for the segmenter).

    The curriculum within one run: for the first ``warmup`` fraction of the iterations the
    segmenter learns from the source alone (L = CE(G(x_s), y_s)) while R learns; then the target
    terms switch on, with q_t and y_sp taken from the current R and segmenter at every step
    (the paper trains the source model and the estimators before adaptation). Superpixels are
    computed for each target batch on the CPU (the batches carry no image index to cache them by).
    Source and target share one forward pass (BatchNorm sees both domains, before and after the
    switch).

    Defaults: lambda_kl 0.1 and lambda_sp 1.0 (the weights of the label-distribution and
    superpixel losses in the authors' released code); landmark_fraction 0.6 (the paper keeps the
    60% most confident superpixels of each class); n_segments 100 and compactness 10 (scikit-image's
    SLIC default compactness; 100 superpixels is the paper's order for 2048x1024 Cityscapes and is
    kept at 64x128, about 80 pixels a superpixel); warmup 1/3 (our choice, the same switch point as
    ``fda``); R with Adam at ``lr_r`` 1e-3, betas (0.9, 0.999), no weight decay (our choice); the
    segmenter uses the trainer's optimizer and schedule.
    """

    summary = "curriculum DA: match inferred target label distributions and landmark-superpixel labels (Zhang et al. 2017)"
    tasks = ("segmentation",)
    defaults = {"lambda_kl": 0.1, "lambda_sp": 1.0, "warmup": 1 / 3, "landmark_fraction": 0.6, "n_segments": 100,
                "compactness": 10.0, "lr_r": 1e-3}
    option_help = {
        "lambda_kl": "weight of KL(inferred target label distribution || predicted one)",
        "lambda_sp": "weight of the cross-entropy on landmark-superpixel pixels",
        "warmup": "training progress in [0, 1] before which only the source loss trains the segmenter",
        "landmark_fraction": "most confident fraction (0, 1] of each class's superpixels kept as landmarks",
        "n_segments": "SLIC superpixels per target image (approximate)",
        "compactness": "SLIC compactness (higher: squarer superpixels)",
        "lr_r": "Adam learning rate of the label-distribution regressor",
    }

    def build(self) -> None:
        o = self.opts
        if not 0.0 < o.landmark_fraction <= 1.0:
            raise EdgedaError(f"method 'cda' option landmark_fraction={o.landmark_fraction} must be in (0, 1]")
        self.nets["model"] = self.make_model()
        self.nets["label_distribution"] = LabelDistributionRegressor(self.model.feature_channels, self.task.num_classes)
        self.optims["main"] = self.make_optimizer(self.model.parameters())
        self.optims["label_distribution"] = self.make_adam(self.nets["label_distribution"].parameters(), o.lr_r, (0.9, 0.999))

    def pixels(self, x: torch.Tensor) -> torch.Tensor:
        """Model inputs back to [0, 1] pixel values (what SLIC segments)."""
        m = torch.as_tensor(self.task.mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        s = torch.as_tensor(self.task.std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        return (x * s + m).clamp(0, 1)

    def step(self, source: Batch, target: Batch | None) -> dict[str, float]:
        o, ns = self.opts, len(source)
        with self.autocast():
            feats, logits = self.model.features_and_logits(torch.cat([source.x, target.x]))
            seg = self.task_loss_of(logits[:ns], source.y)
        r_logits = self.nets["label_distribution"](feats.detach())
        q_t = r_logits[ns:].detach().softmax(1)
        r_loss = soft_cross_entropy(r_logits[:ns], class_fractions(source.y, self.task.num_classes))
        self.update(r_loss, "label_distribution")
        out = {"loss/seg": seg.item(), "loss/label_distribution": r_loss.item()}
        if self.progress < o.warmup:
            self.update(seg, "main")
            return {**out, "cda/on": 0.0}
        kl = label_distribution_kl(q_t, predicted_label_distribution(logits[ns:]))
        segments = slic_superpixels(self.pixels(target.x), o.n_segments, o.compactness)
        y_sp = landmark_labels(segments, logits[ns:].detach().float().softmax(1), o.landmark_fraction)
        labelled = y_sp != IGNORE_INDEX
        sp = self.task_loss_of(logits[ns:], y_sp) if bool(labelled.any()) else logits.new_zeros(()).float()
        self.update(seg + o.lambda_kl * kl + o.lambda_sp * sp, "main")
        return {**out, "loss/kl": kl.item(), "loss/sp": sp.item(), "sp/landmark_pixels": labelled.float().mean().item(),
                "cda/on": 1.0}

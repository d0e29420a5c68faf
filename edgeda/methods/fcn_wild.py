"""FCNs in the wild: pixel-level adversarial and constraint-based adaptation."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models.class_size import ClassSizeBounds, size_constraint_loss
from ..models.dense_gan import PixelDomainClassifier
from .base import Batch, Method
from .registry import METHODS


def domain_loss(logits_source: torch.Tensor, logits_target: torch.Tensor, inverted: bool = False) -> torch.Tensor:
    """Per-location BCE of a pixel-wise domain classifier, source = 1, target = 0 (swapped when
    ``inverted``: the representation's update, which trains F to make D take each domain for the other)."""
    s, t = (0.0, 1.0) if inverted else (1.0, 0.0)
    ls, lt = logits_source.float(), logits_target.float()
    return 0.5 * (F.binary_cross_entropy_with_logits(ls, torch.full_like(ls, s))
                  + F.binary_cross_entropy_with_logits(lt, torch.full_like(lt, t)))


@METHODS.register("fcn_wild")
class FCNsInTheWild(Method):
    """FCNs in the wild: global alignment by a pixel-wise domain classifier on the encoder's feature
    map, plus category-specific adaptation by a constrained multiple-instance (class-size) loss.

    Hoffman, Wang, Yu & Darrell, "FCNs in the Wild: Pixel-level Adversarial and Constraint-based
    Adaptation", arXiv:1612.02649, 2016.

    Global: a fully convolutional domain classifier D gives a logit per location of the encoder's
    final map phi(x). D and the representation are updated in alternation, the representation
    with the inverted domain labels:

        L_D   = BCE(D(phi(x_s)), 1) + BCE(D(phi(x_t)), 0)                     (D only)
        L_inv = BCE(D(phi(x_t)), 1) + BCE(D(phi(x_s)), 0)                     (phi only)

    Category-specific: from the source label maps, per class c the per-image pixel fraction s_ic over
    the images containing c gives bounds lo_c (the ``low`` percentile) and hi_c (the ``high``
    percentile); on each target image, for each class predicted present (arg-max of some pixel),
    with f_c the mean softmax probability of c,

        L_size = mean_(i, c present) max(0, lo_c - f_ic) + max(0, f_ic - hi_c)

    (:mod:`edgeda.models.class_size`). The network minimises

        L = CE(C(phi(x_s)), y_s) + w_adv L_inv + w_size L_size.

    The bounds come from the source batches seen so far (a ring buffer of ``stats_images`` images);
    L_size starts once ``min_stats`` source images have been seen.

    Defaults: the network with the trainer's optimizer (the paper fine-tunes a VGG-16 FCN with
    SGD), D with Adam at ``lr_d`` 2e-4, betas (0.5, 0.999), hidden width 256; percentiles 10 and 90
    (the paper's lower bound is the low 10% of the source class-size distribution); w_adv 0.1 and
    w_size 1.0 (the paper states no weights: these are our choice, the adversarial term kept small
    next to the per-pixel source loss); 2000 stored images, 64 before the size loss starts.
    """

    summary = "FCNs in the wild: pixel-wise adversarial feature alignment + class-size constrained MIL (Hoffman et al. 2016)"
    tasks = ("segmentation",)
    defaults = {"w_adv": 0.1, "w_size": 1.0, "lr_d": 2e-4, "hidden": 256, "low": 0.1, "high": 0.9,
                "stats_images": 2000, "min_stats": 64}
    option_help = {"w_adv": "weight of the inverted-label domain loss in the network's update",
                   "w_size": "weight of the class-size (constrained MIL) loss on target predictions",
                   "lr_d": "Adam learning rate of the pixel-wise domain classifier",
                   "hidden": "domain classifier hidden channels",
                   "low": "percentile (0-1) of source class fractions for the lower bound",
                   "high": "percentile (0-1) of source class fractions for the upper bound",
                   "stats_images": "source images kept for the class-size statistics",
                   "min_stats": "source images seen before the size loss starts"}

    def build(self) -> None:
        o = self.opts
        self.nets["model"] = self.make_model()
        self.nets["domain"] = PixelDomainClassifier(self.model.feature_channels, o.hidden)
        self.nets["class_size"] = ClassSizeBounds(self.task.num_classes, o.stats_images, o.low, o.high)
        self.optims["main"] = self.make_optimizer(self.model.parameters())
        self.optims["domain"] = self.make_adam(self.nets["domain"].parameters(), o.lr_d)

    def step(self, source: Batch, target: Batch | None) -> dict[str, float]:
        ns, D, stats = len(source), self.nets["domain"], self.nets["class_size"]
        stats.observe(source.y)
        with self.autocast():
            feats, logits = self.model.features_and_logits(torch.cat([source.x, target.x]))
            d_loss = domain_loss(D(feats[:ns].detach()), D(feats[ns:].detach()))
        self.update(d_loss, "domain")
        with self.autocast():
            d_s, d_t = D(feats[:ns]), D(feats[ns:])
            inv = domain_loss(d_s, d_t, inverted=True)
            seg = self.task_loss_of(logits[:ns], source.y)
            if stats.count >= self.opts.min_stats:
                size = size_constraint_loss(logits[ns:], *stats.bounds())
            else:
                size = logits.new_zeros(())
            loss = seg + self.opts.w_adv * inv + self.opts.w_size * size
        self.update(loss, "main")
        with torch.no_grad():
            acc = 0.5 * ((d_s > 0).float().mean() + (d_t <= 0).float().mean())
        return {"loss/seg": seg.item(), "loss/domain": d_loss.item(), "loss/inverted": inv.item(),
                "loss/size": float(size.detach()), "acc/domain": acc.item()}

"""Domain-adversarial training (DANN)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models import DomainClassifier, dann_coefficient
from ..errors import EdgedaError
from ..models.dense_alignment import pixel_domain_adversarial_loss
from ..models.dense_gan import PixelDomainClassifier
from ..tasks import task_of
from .base import Batch, Method
from .losses import domain_adversarial_loss
from .registry import METHODS


@METHODS.register("dann")
class DANN(Method):
    """DANN: domain classifier on features through a gradient reversal layer.

    Ganin & Lempitsky, "Unsupervised Domain Adaptation by Backpropagation", ICML 2015;
    Ganin et al., "Domain-Adversarial Training of Neural Networks", JMLR 2016.

    L = CE(C(x_s), y_s) + w * [BCE(D(R_l(f_s)), 1) + BCE(D(R_l(f_t)), 0)]
    where R_l reverses the gradient scaled by l_p = max * (2 / (1 + exp(-gamma p)) - 1) and p is
    training progress in [0, 1]; the trainer anneals the learning rate lr_p = lr0 / (1 + 10 p)^0.75
    (its ``dann`` schedule). Source and target share one forward pass (BatchNorm sees both).

    Defaults: gamma 10, max coefficient 1.0, domain-loss weight 1.0, no warm-up, a domain classifier
    MLP with two hidden layers of 1024 units and no dropout (the size Ganin et al. used for digits;
    a 256-unit classifier with dropout 0.5 stayed at chance, giving the features almost no
    adversarial signal), one SGD optimizer over all parameters.

    Dense tasks (segmentation, depth): the domain classifier is pixel-wise (three 1x1 convs with
    ``hidden`` channels, no dropout) on the encoder's final feature map, one domain logit per location,
    L = L_task(G(x_s), y_s) + w * mean_{h,w} [BCE(D(R_l(f_s)), 1) + BCE(D(R_l(f_t)), 0)], with the
    task's own source loss (per-pixel CE; depth: ``--task-loss``).

    Detection (a network with its own loss and multi-scale ``features``): image-level alignment as in
    Chen et al., "Domain Adaptive Faster R-CNN for Object Detection in the Wild", CVPR 2018 (their
    image-level term; the instance-level one is not implemented), in the setting of Xu et al. 2019
    (adversarial synthetic-to-real transfer of SSD detectors): one pixel-wise domain classifier per
    feature level l of ``model.features``, L = L_det(x_s, y_s) + w * (1/|levels|) sum_l
    mean_{h,w} [BCE(D_l(R(f_s^l)), 1) + BCE(D_l(R(f_t^l)), 0)], with ``hidden`` channels each (the
    1024 of the classification default is cut to 256 for the many levels of a detector unless given).
    """

    summary = "domain-adversarial training with a gradient reversal layer (Ganin & Lempitsky 2015)"
    tasks = ("classification", "segmentation", "depth", "detection")
    defaults = {"gamma": 10.0, "max_coeff": 1.0, "weight": 1.0, "hidden": 1024, "dropout": 0.0, "warmup": 0.0}

    def build(self) -> None:
        self.nets["classifier"] = self.make_classifier()
        self.dense = task_of(self.task).dense
        self.multi_scale = callable(getattr(self.classifier, "loss", None))  # a detector: levels of features
        if self.multi_scale:
            if self.opts["dropout"]:
                raise EdgedaError("dann's per-level domain classifiers (detection) have no dropout; leave option dropout at 0")
            hidden = self.opts["hidden"] if "hidden" in self.given else 256
            self.nets["domain"] = torch.nn.ModuleList(PixelDomainClassifier(c, hidden) for c in self._level_channels())
        elif self.dense:
            if self.opts["dropout"]:
                raise EdgedaError("dann's pixel-wise domain classifier (segmentation, depth) has no dropout; leave option dropout at 0")
            self.nets["domain"] = PixelDomainClassifier(self.classifier.feature_channels, self.opts["hidden"])
        else:
            self.nets["domain"] = DomainClassifier(
                self.nets["classifier"].feature_dim, self.opts["hidden"], self.opts["dropout"]
            )
        self.optims["main"] = self.make_optimizer(self.nets.parameters())

    def _level_channels(self) -> list[int]:
        h, w = self.task.image_size
        was = self.classifier.training
        self.classifier.eval()
        with torch.no_grad():
            feats = self.classifier.features(torch.zeros(1, self.task.channels, h, w))
        self.classifier.train(was)
        return [int(f.shape[1]) for f in feats]

    def _detection_step(self, source: Batch, target: Batch, coeff: float) -> dict[str, float]:
        ns = len(source)
        model = self.classifier
        with self.autocast():
            feats = model.features(torch.cat([source.x, target.x]))
            det_loss = self.task_loss_of(model(source.x), source.y)
            parts = [pixel_domain_adversarial_loss(d, f[:ns], f[ns:], coeff) for d, f in zip(self.nets["domain"], feats)]
            dom_loss = torch.stack([p[0] for p in parts]).mean()
            dom_acc = torch.stack([p[1] for p in parts]).mean()
            loss = det_loss + self.opts["weight"] * dom_loss
        self.update(loss)
        return {"loss/cls": det_loss.item(), "loss/domain": dom_loss.item(), "acc/domain": dom_acc.item(), "grl": coeff}

    def step(self, source: Batch, target: Batch | None) -> dict[str, float]:
        ns = len(source)
        coeff = dann_coefficient(self.progress, self.opts["gamma"], self.opts["max_coeff"], self.opts["warmup"])
        if self.multi_scale:
            return self._detection_step(source, target, coeff)
        with self.autocast():
            feats, logits = self.classifier.features_and_logits(torch.cat([source.x, target.x]))
            if self.dense:
                cls_loss = self.task_loss_of(logits[:ns], source.y)
                dom_loss, dom_acc = pixel_domain_adversarial_loss(self.nets["domain"], feats[:ns], feats[ns:], coeff)
            else:
                cls_loss = F.cross_entropy(logits[:ns].float(), source.y)
                dom_loss, dom_acc = domain_adversarial_loss(self.nets["domain"], feats[:ns], feats[ns:], coeff)
            loss = cls_loss + self.opts["weight"] * dom_loss
        self.update(loss)
        return {"loss/cls": cls_loss.item(), "loss/domain": dom_loss.item(), "acc/domain": dom_acc.item(), "grl": coeff}


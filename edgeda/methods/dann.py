"""Domain-adversarial training (DANN)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models import DomainClassifier, dann_coefficient
from ..errors import EdgedaError
from ..models.dense_alignment import level_domain_adversarial_loss, pixel_domain_adversarial_loss
from ..models.dense_gan import PixelDomainClassifier
from ..models.detection.instance_alignment import (InstanceDomainClassifier, assign_levels, consistency_loss,
                                                    instance_domain_loss, roi_align)
from ..tasks import task_of
from .base import Batch, Method
from .losses import domain_adversarial_loss
from .registry import METHODS

POOL = 2  # RoIAlign bins per side of an instance (and samples per bin side)


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
    Chen et al., "Domain Adaptive Faster R-CNN for Object Detection in the Wild", CVPR 2018, in the
    setting of Xu et al. 2019 (adversarial synthetic-to-real transfer of SSD detectors): one pixel-wise
    domain classifier per feature level l of ``model.features``, L_img = (1/|levels|) sum_l
    mean_{h,w} [BCE(D_l(R(f_s^l)), 1) + BCE(D_l(R(f_t^l)), 0)], with ``hidden`` channels each (the
    1024 of the classification default is cut to 256 for the many levels of a detector unless given).
    Where the levels are plain convolutions (an FPN's outputs, FCOS; SSDLite's each leave a BatchNorm,
    whose affine scale alone sets theirs) the classifiers see them standardised over channels at each
    location: the encoder, maximising an unbounded BCE through the reversal, otherwise wins by scaling
    its features up (on the synscenes detection row FCOS's domain loss reached 10^3 where SSDLite's stays
    near ln 2, and mAP@.5 fell to 0.3 %), and the reversed gradient through the standardisation has no
    component along their scale or offset.

    Instance level (option ``instance`` > 0; Chen et al.'s instance-level classifier and consistency
    regulariser, :mod:`edgeda.models.detection.instance_alignment`): the features under boxes -- the
    ground-truth boxes on source images, the detector's own detections on target images (the best
    ``instance_boxes`` per image above ``instance_score``, computed without gradient, as Faster R-CNN's
    proposals) -- pooled by RoIAlign (2 x 2 bins, 2 x 2 samples each) from one level per box (the
    coarsest the box spans two cells of), and one instance domain classifier per level (MLP with
    ``instance_hidden`` units) through the same gradient reversal:
      L_ins = mean_j BCE(D_ins(R(r_j)), d_j),   L_cst = mean_j | mean_{u,v} p_i^(u,v) - p_{i,j} |
    (p_i^(u,v): the image-level domain probability of instance j's image at the locations of its level;
    p_{i,j}: the instance's). L = L_det + w * (L_img + instance * L_ins + consistency * L_cst); the
    consistency term trains both classifiers and reaches the features through the reversal layers.

    Chen et al.'s defaults: lambda = 0.1 on L_img + L_ins + L_cst together, SGD at 0.001 (50k iterations,
    then 0.0001 for 20k), one source and one target image per batch, a 1024-1024 instance classifier on
    Faster R-CNN's RoI features. Scaled to the CPU budget (hundreds of iterations, batches of 8 + 8):
    ``instance`` 0 (off: image-level only, as before) and, when on, 1.0 with ``consistency`` 1.0 (the
    paper's equal weights; ``weight`` scales the three together as its lambda does), 16 instances per
    image, ``instance_score`` 0.05 (the evaluation threshold), 256 hidden units, the same annealed
    reversal coefficient as the image level (the paper's is constant).
    """

    summary = "domain-adversarial training with a gradient reversal layer (Ganin & Lempitsky 2015)"
    tasks = ("classification", "segmentation", "depth", "detection")
    defaults = {"gamma": 10.0, "max_coeff": 1.0, "weight": 1.0, "hidden": 1024, "dropout": 0.0, "warmup": 0.0,
                "instance": 0.0, "consistency": 1.0, "instance_boxes": 16, "instance_score": 0.05,
                "instance_hidden": 256}
    option_tasks = {k: ("detection",) for k in ("instance", "consistency", "instance_boxes", "instance_score",
                                                 "instance_hidden")}

    def build(self) -> None:
        self.nets["model"] = self.make_model()
        self.pixelwise = task_of(self.task).spatial_output  # a domain classifier per pixel (else per image)
        self.multi_scale = callable(getattr(self.model, "loss", None))  # a detector: levels of features
        if self.multi_scale:
            if self.opts.dropout:
                raise EdgedaError("dann's per-level domain classifiers (detection) have no dropout; leave option dropout at 0")
            hidden = self.opts.hidden if "hidden" in self.given else 256
            channels = self.model.level_channels(self.task.channels)
            self.nets["domain"] = torch.nn.ModuleList(PixelDomainClassifier(c, hidden) for c in channels)
            if self.opts.instance > 0:
                self.nets["instance_domain"] = torch.nn.ModuleList(
                    InstanceDomainClassifier(c * POOL * POOL, self.opts.instance_hidden) for c in channels)
        elif self.opts.instance > 0:
            raise EdgedaError("dann option instance (instance-level alignment under boxes) is for detection")
        elif self.pixelwise:
            if self.opts.dropout:
                raise EdgedaError("dann's pixel-wise domain classifier (segmentation, depth) has no dropout; leave option dropout at 0")
            self.nets["domain"] = PixelDomainClassifier(self.model.feature_channels, self.opts.hidden)
        else:
            self.nets["domain"] = DomainClassifier(
                self.nets["model"].feature_dim, self.opts.hidden, self.opts.dropout
            )
        self.optims["main"] = self.make_optimizer(self.nets.parameters())

    def _detection_step(self, source: Batch, target: Batch, coeff: float) -> dict[str, float]:
        ns = len(source)
        model = self.model
        instance = self.opts.instance > 0
        with self.autocast():
            feats = model.features(torch.cat([source.x, target.x]))
            det_loss = self.task_loss_of(model(source.x), source.y)
            dom_loss, dom_acc, seen, logits = level_domain_adversarial_loss(
                self.nets["domain"], feats, ns, coeff, model.normalised_features)
            loss = det_loss + self.opts.weight * dom_loss
            out = {}
            if instance:
                ins, cst, out = self._instance_terms(source, feats, seen, logits, coeff)
                loss = loss + self.opts.weight * (self.opts.instance * ins + self.opts.consistency * cst)
        self.update(loss)
        return {"loss/cls": det_loss.item(), "loss/domain": dom_loss.item(), "acc/domain": dom_acc.item(), "grl": coeff, **out}

    def _instance_terms(self, source: Batch, feats: list[torch.Tensor], seen: list[torch.Tensor],
                        image_logits: list[torch.Tensor], coeff: float):
        """(L_ins, L_cst, logged values) over the source's ground-truth boxes and the target's detections
        (``feats``: the detector's maps, for its detections; ``seen``: the maps the classifiers see)."""
        model, ns, k = self.model, len(source), self.opts.instance_boxes
        h, w = self.task.image_size
        strides = [(h / f.shape[-2], w / f.shape[-1]) for f in feats]  # per axis (odd sizes round the maps up)
        with torch.no_grad():
            dets = model.postprocess(model.heads([f[ns:].detach() for f in feats]), max_det=k,
                                     score_thresh=self.opts.instance_score)
        boxes = [y["boxes"][:k] for y in source.y] + [d["boxes"] for d in dets]
        levels = [assign_levels(b, [(sy * sx) ** 0.5 for sy, sx in strides]) for b in boxes]
        losses, logits, image_prob, domain = [], [], [], []
        for lvl, (f, disc) in enumerate(zip(seen, self.nets["instance_domain"])):
            pooled, image_of = roi_align(f, [b[lv == lvl] for b, lv in zip(boxes, levels)], strides[lvl], POOL, POOL)
            if not len(pooled):
                continue
            d = (image_of < ns).float()
            loss, _, lg = instance_domain_loss(disc, pooled, d, coeff)
            losses.append(loss * len(d))
            logits.append(lg)
            domain.append(d)
            image_prob.append(torch.sigmoid(image_logits[lvl]).flatten(1).mean(1)[image_of])
        if not logits:
            zero = feats[0].new_zeros(()).float()
            return zero, zero, {"instances/source": 0.0, "instances/target": 0.0}
        logits, domain, image_prob = torch.cat(logits), torch.cat(domain), torch.cat(image_prob)
        ins = torch.stack(losses).sum() / len(domain)  # the mean over every instance of every level
        cst = consistency_loss(image_prob, torch.sigmoid(logits))
        acc = ((logits > 0).float() == domain).float().mean()
        return ins, cst, {"loss/instance": ins.item(), "loss/consistency": cst.item(), "acc/instance": acc.item(),
                          "instances/source": float(domain.sum()) / ns,
                          "instances/target": float((1 - domain).sum()) / max(1, len(dets))}

    def step(self, source: Batch, target: Batch | None) -> dict[str, float]:
        ns = len(source)
        coeff = dann_coefficient(self.progress, self.opts.gamma, self.opts.max_coeff, self.opts.warmup)
        if self.multi_scale:
            return self._detection_step(source, target, coeff)
        with self.autocast():
            feats, logits = self.model.features_and_logits(torch.cat([source.x, target.x]))
            if self.pixelwise:
                cls_loss = self.task_loss_of(logits[:ns], source.y)
                dom_loss, dom_acc = pixel_domain_adversarial_loss(self.nets["domain"], feats[:ns], feats[ns:], coeff)
            else:
                cls_loss = F.cross_entropy(logits[:ns].float(), source.y)
                dom_loss, dom_acc = domain_adversarial_loss(self.nets["domain"], feats[:ns], feats[ns:], coeff)
            loss = cls_loss + self.opts.weight * dom_loss
        self.update(loss)
        return {"loss/cls": cls_loss.item(), "loss/domain": dom_loss.item(), "acc/domain": dom_acc.item(), "grl": coeff}


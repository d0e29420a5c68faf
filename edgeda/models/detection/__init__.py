"""Object detectors: SSDLite (MobileNetV3-Large) and FCOS (ResNet / MobileNetV3 + FPN), with torchvision's
parameter names, their papers' losses, one box coder per family and one NMS.

Building
--------
``build("detector", arch="ssdlite" | "fcos", num_classes=K, channels=3, image_size=(H, W), **kwargs)``
(every keyword JSON-serialisable, so a bundle rebuilds the model from its record).

``arch="ssdlite"``
    :class:`~edgeda.models.detection.ssdlite.SSDLite`; ``backbone="mobilenet_v3_large"`` (the only one),
    ``width`` (1.0 = torchvision's ``ssdlite320_mobilenet_v3_large``; 0.25-0.5 for a CPU profile),
    ``reduced_tail`` (True, as torchvision's SSDLite and its COCO checkpoint; False to load an ImageNet
    MobileNetV3-Large trunk).
``arch="fcos"``
    :class:`~edgeda.models.detection.fcos.FCOS`; ``backbone`` ``"resnet50"`` (default, torchvision's
    ``fcos_resnet50_fpn``), ``"resnet18"``, ``"mobilenet_v3_large"``; ``width`` (ResNet base width, 64;
    MobileNet multiplier, 1.0), ``fpn_channels`` (256; a multiple of 32, at least 64), ``num_convs`` (4).

Contract
--------
Class ids are ``0 .. K-1`` with no background class. Internally the heads have ``K + 1`` outputs in
torchvision's convention (column 0 is SSD's background; FCOS never assigns it), so a checkpoint of
torchvision's model built with ``num_classes=K+1`` loads with no missing or unexpected keys and the same
outputs; dataset class ``c`` is column ``c + 1``.

``model(images)``
    ``images``: the normalised batch ``(B, C, H, W)`` as every edgeda model receives it (``(x - mean) / std``
    with the task's mean and std). Returns the raw head outputs: SSD ``cls_logits`` (B, A, K+1),
    ``bbox_regression`` (B, A, 4); FCOS also ``bbox_ctrness`` (B, A, 1).
``model.anchors(image_size=None, device=None)``
    ``(A, 4)`` anchors in pixels for that input size (default the build ``image_size``), cached; a
    function of the input size only.
``model.loss(outputs, targets, image_size=None)``
    ``targets``: one dict per image, ``boxes`` float32 (N, 4) ``x1 y1 x2 y2`` input pixels, ``labels`` int64
    (N,) in ``0 .. K-1``, optional ``weights`` float (N,) (pseudo-label confidence); N may be 0. Returns
    ``{"loss": total, ...parts}`` (:mod:`~edgeda.models.detection.losses`).
``model.decode(outputs, image_size=None)``
    ``(boxes (B, A, 4) pixels clipped to the image, scores (B, A, K))``: pure tensor ops, exportable.
    SSD: softmax without the background column; FCOS: ``sqrt(sigmoid(cls) * sigmoid(ctrness))``.
``model.postprocess(outputs, score_thresh=0.05, iou_thresh=None, max_det=100, pre_nms_topk=1000, image_size=None)``
    one dict per image, ``boxes`` (n, 4), ``scores`` (n,), ``labels`` (n,) int64 in ``0 .. K-1``, by
    decreasing score: the ``pre_nms_topk`` best (anchor, class) pairs above ``score_thresh``, class-aware
    NMS (:func:`~edgeda.models.detection.boxes.batched_nms`) at ``iou_thresh`` (default ``model.nms_iou``:
    0.55 SSDLite, 0.6 FCOS, torchvision's values), at most ``max_det``. (torchvision picks its pre-NMS
    candidates per class for SSD and per level for FCOS; one ranking over all pairs is what the exported
    graph and TensorRT's ``EfficientNMS_TRT`` compute. With ``pre_nms_topk`` above the number of
    candidates the two agree.)
``model.features(images)``
    the list of multi-scale maps the heads see (SSDLite: six levels, strides 16 .. 512; FCOS: P3 .. P7),
    for image-level adversarial alignment; ``model.features_and_outputs(images)`` gives both from one pass.

``model.trunk``
    the classification network in its own public layout, sharing the detector's parameters: an ImageNet
    checkpoint of it (torchvision ``resnet50`` / ``resnet18`` / ``mobilenet_v3_large``; for SSDLite with
    ``reduced_tail=False``) loads with :func:`edgeda.models.weights.load_backbone_weights` ``(model.trunk, path)``.
``model.param_groups(lr, encoder_lr_mult=1.0)``
    the trunk (MobileNetV3 / ResNet) at ``lr * encoder_lr_mult``, the rest (extra layers, pyramid, heads) at ``lr``.
``model.checkpoint_mean`` / ``model.checkpoint_std``
    the normalisation torchvision's checkpoints expect (SSDLite 0.5 / 0.5, i.e. ``[-1, 1]``; FCOS ImageNet's):
    the task's mean and std should equal them when such weights are loaded.

``image_size`` arguments matter only when the input size differs from the build size; a mismatch between
the outputs' anchor count and the size is an error. Attributes: ``num_classes``, ``image_size``,
``nms_iou``, ``arch``, ``encoder`` (``backbone``: the trunk with SSDLite's extra layers or FCOS's pyramid),
``output_keys()`` (the class-count-dependent tensors) and ``classes_in_checkpoint(state)`` (``K`` of a checkpoint in
the same layout), so :func:`edgeda.models.weights.load_pretrained` loads torchvision's whole-model checkpoints
(``ssdlite320_mobilenet_v3_large_coco``, ``fcos_resnet50_fpn_coco``; with another class count the output layers
stay initialised). It also loads an ImageNet checkpoint of the trunk into the whole detector
(``checkpoint_key`` maps the trunk's own names to the detector's, ``encoder_only_keys()`` is what such a file
must cover; the extra layers, pyramid and heads stay initialised), and ``options_for_checkpoint(state, options)``
gives the build settings a file implies (SSDLite on a full-tail ImageNet MobileNetV3: ``reduced_tail=False``).

Export with decoding and NMS in the graph: :func:`edgeda.export.detection.export_detector_onnx`.
Small models for CPU runs (tests use them at 64 x 64): ``ssdlite`` with ``width=0.25``-``0.5``;
``fcos`` with ``backbone="resnet18", width=8``-``16, fpn_channels=64, num_convs=1``-``2``.
"""
from __future__ import annotations

from ...errors import EdgedaError
from ..registry import ARCHITECTURES
from .base import Detector
from .boxes import batched_nms, box_iou
from .fcos import FCOS
from .ssdlite import SSDLite

DETECTORS = {"ssdlite": SSDLite, "fcos": FCOS}


@ARCHITECTURES.register("detector")
def detector(arch: str = "ssdlite", **kwargs) -> Detector:
    """A detector by ``arch`` (see :mod:`edgeda.models.detection`)."""
    if arch not in DETECTORS:
        raise EdgedaError(f"unknown detector arch {arch!r}; valid: {', '.join(DETECTORS)}")
    return DETECTORS[arch](**kwargs)


__all__ = ["DETECTORS", "FCOS", "Detector", "SSDLite", "batched_nms", "box_iou", "detector"]

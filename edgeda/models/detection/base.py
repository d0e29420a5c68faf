"""What every detector shares: input-size checks, the anchor cache, ``postprocess`` through the one NMS."""
from __future__ import annotations

import torch
from torch import nn

from ...errors import EdgedaError
from .boxes import batched_nms


def image_size_of(image_size) -> tuple[int, int]:
    """``(H, W)`` from an int or a pair (JSON gives lists)."""
    if isinstance(image_size, int) and not isinstance(image_size, bool):
        image_size = (image_size, image_size)
    try:
        h, w = (int(v) for v in image_size)
    except (TypeError, ValueError):
        raise EdgedaError(f"detector image_size must be an int or (height, width), not {image_size!r}") from None
    if h < 32 or w < 32:
        raise EdgedaError(f"detector image_size must be at least 32 x 32 pixels, not {h} x {w}")
    return h, w


def check_common(num_classes, channels) -> None:
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise EdgedaError(f"detector num_classes must be a positive integer (no background class), not {num_classes!r}")
    if not isinstance(channels, int) or isinstance(channels, bool) or channels < 1:
        raise EdgedaError(f"detector channels must be a positive integer, not {channels!r}")


class Detector(nn.Module):
    """Base class: subclasses set ``num_classes``, ``image_size``, ``nms_iou`` and implement ``features``,
    ``heads`` (feature maps -> raw outputs), ``_make_anchors(image_size)``, ``decode`` and ``loss``."""

    arch: str = ""
    nms_iou: float = 0.5
    # whether every map of ``features`` leaves a BatchNorm (then its activation), so that its scale is
    # the norm's own affine one (SSDLite); an FPN's outputs are plain convolutions whose scale is the
    # product of their weights' (FCOS), which feature-level alignment must allow for
    normalised_features: bool = False
    # the input normalisation torchvision's checkpoints of this detector were trained with
    checkpoint_mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    checkpoint_std: tuple[float, ...] = (0.229, 0.224, 0.225)

    def _init_common(self, num_classes: int, image_size) -> None:
        self.num_classes = num_classes
        self.image_size = image_size_of(image_size)
        self._anchor_cache: dict = {}

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.heads(self.features(images))

    def features_and_outputs(self, images: torch.Tensor) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        """The feature maps the heads see and the raw outputs, from one pass (for feature-level alignment)."""
        feats = self.features(images)
        return feats, self.heads(feats)

    def level_channels(self, channels: int = 3) -> list[int]:
        """The channel count of each map of ``features`` (one no-grad pass on a zero image of the build size)."""
        was = self.training
        self.eval()
        try:
            with torch.no_grad():
                param = next(self.parameters())
                feats = self.features(torch.zeros(1, channels, *self.image_size, device=param.device, dtype=param.dtype))
        finally:
            self.train(was)
        return [int(f.shape[1]) for f in feats]

    def anchors(self, image_size=None, device=None) -> torch.Tensor:
        """``(A, 4)`` anchors (pixels, ``x1 y1 x2 y2``) for inputs of ``image_size`` (default: the build size), cached."""
        size = self.image_size if image_size is None else image_size_of(image_size)
        device = torch.device("cpu") if device is None else torch.device(device)
        key = (size, str(device))
        if key not in self._anchor_cache:
            self._anchor_cache[key] = self._make_anchors(size).to(device)
        return self._anchor_cache[key]

    @property
    def trunk(self) -> nn.Module:
        """The classification network the detector is built on, in its public layout (what an ImageNet checkpoint covers)."""
        raise NotImplementedError

    # -- pre-trained weights (:func:`edgeda.models.weights.load_pretrained`) ----------------------
    def _trunk_names(self) -> dict[str, str]:
        """The trunk's own tensor names (``13.block.1.0.weight``, ``layer1.0.conv1.weight``) -> this
        model's (``backbone.features.1.0.1.0.weight``, ``backbone.body.layer1.0.conv1.weight``): the
        same tensors, so the map follows from their identity."""
        names = self.__dict__.get("_trunk_name_map")
        if names is None:
            mine = {id(t): n for n, t in self.state_dict(keep_vars=True).items()}
            names = {n: mine[id(t)] for n, t in self.trunk.state_dict(keep_vars=True).items() if id(t) in mine}
            self.__dict__["_trunk_name_map"] = names
        return names

    def checkpoint_key(self, key: str) -> str:
        """A tensor name of an ImageNet classifier checkpoint of the trunk (torchvision ``mobilenet_v3_large``:
        ``features.{i}.*``; ``resnet50``: ``conv1``, ``layer1`` ..) as this model names it; other keys unchanged."""
        from ..weights import _candidates

        names = self._trunk_names()
        return next((names[f] for f in _candidates(key) if f in names), key)

    def encoder_only_keys(self) -> list[str]:
        """What an encoder-only checkpoint must supply: the trunk (SSDLite's extra layers and FCOS's
        pyramid are the detector's own and start at their initialisation)."""
        return list(self._trunk_names().values())

    @classmethod
    def options_for_checkpoint(cls, state: dict, options: dict) -> dict:
        """Build options that make this detector fit a checkpoint's tensors (``options``: the given
        ones, never overridden); by default ``options`` unchanged."""
        return dict(options)

    def param_groups(self, lr: float, encoder_lr_mult: float = 1.0) -> list[dict]:
        """Optimizer parameter groups: the trunk at ``lr * encoder_lr_mult``, everything else at ``lr``."""
        trunk = list(self.trunk.parameters())
        ids = {id(p) for p in trunk}
        rest = [p for p in self.parameters() if id(p) not in ids]
        return [{"params": trunk, "lr": lr * encoder_lr_mult}, {"params": rest, "lr": lr}]

    def _anchors_for(self, outputs: dict[str, torch.Tensor], image_size) -> tuple[torch.Tensor, tuple[int, int]]:
        size = self.image_size if image_size is None else image_size_of(image_size)
        ref = outputs["bbox_regression"]
        anchors = self.anchors(size, ref.device)
        if anchors.shape[0] != ref.shape[1]:
            raise EdgedaError(f"the outputs have {ref.shape[1]} anchors but a {size[0]} x {size[1]} input has "
                              f"{anchors.shape[0]}: pass the input's image_size")
        return anchors, size

    def assigned(self, gt_boxes: torch.Tensor, image_size=None) -> torch.Tensor:
        """``(N,)`` bool: which of one image's ``gt_boxes`` (pixels at ``image_size``) this detector's target
        assignment makes a positive for without a forced match (SSD: some default box at IoU >= 0.5;
        FCOS: some location), i.e. the boxes it can learn as the paper intends."""
        raise NotImplementedError

    def _check_targets(self, outputs: dict[str, torch.Tensor], targets: list[dict]) -> None:
        n = outputs["bbox_regression"].shape[0]
        if len(targets) != n:
            raise EdgedaError(f"the detector's loss got {len(targets)} targets for a batch of {n} images")

    @torch.no_grad()
    def postprocess(self, outputs: dict[str, torch.Tensor], score_thresh: float = 0.05, iou_thresh: float | None = None,
                    max_det: int = 100, pre_nms_topk: int = 1000, image_size=None) -> list[dict[str, torch.Tensor]]:
        """Detections per image: ``boxes`` (n, 4) pixels, ``scores`` (n,), ``labels`` (n,) in ``0 .. K-1``, by
        decreasing score. Of all (anchor, class) pairs scoring ``> score_thresh`` the ``pre_nms_topk`` best
        go through class-aware NMS at ``iou_thresh`` (the model's ``nms_iou`` by default); ``max_det`` stay."""
        boxes, scores = self.decode(outputs, image_size)
        iou = self.nms_iou if iou_thresh is None else iou_thresh
        k = scores.shape[-1]
        out = []
        for b, s in zip(boxes, scores):
            flat = s.flatten()
            top, idx = flat.topk(min(pre_nms_topk, flat.numel()))
            ok = top > score_thresh
            top, idx = top[ok], idx[ok]
            cand_boxes, labels = b[idx // k], idx % k
            keep = batched_nms(cand_boxes, top, labels, iou)[:max_det]
            out.append({"boxes": cand_boxes[keep], "scores": top[keep], "labels": labels[keep]})
        return out

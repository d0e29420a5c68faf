"""Dense models in the layouts of the public checkpoints users hold: torchvision's segmentation
models and Hugging Face SegFormer. Their state dicts carry the public names, so
``lraspp_mobilenet_v3_large-*.pth``, ``deeplabv3_resnet50_coco-*.pth``, ``fcn_resnet50_coco-*.pth`` or a
Hub ``model.safetensors`` load with no missing keys and the model computes the same function
(see ``tests/test_pretrained.py``).

Why new arch names rather than options of ``lraspp`` / ``deeplab``: those two keep their own
layouts (``encoder.*``/``head.*``, a MobileNetV3-Small-style trunk, a DeepLab-v3+ decoder) and the
stored benchmarks were trained with them, so an existing config must keep building exactly the same
module. A torchvision layout is a different architecture (other module names, BatchNorm eps, head),
so it gets the name its builder has in torchvision, and a bundle records which one it holds.

``arch`` (``--backbone``):

``lraspp_mobilenet_v3_large`` / ``lraspp_mobilenet_v3_small``
    ``backbone.{i}``: MobileNetV3 ``features`` with the last stage dilated (output stride 16);
    ``classifier``: LR-ASPP (Howard et al. 2019): ``cbr`` (1x1 conv + BN + ReLU, 128 channels)
    times ``scale`` (global mean, 1x1 conv, sigmoid), upsampled to the ``c2`` level (stride 8) and
    classified by ``high_classifier``, plus ``low_classifier`` of ``c2``.
``deeplabv3_resnet50`` / ``deeplabv3_resnet101`` / ``deeplabv3_mobilenet_v3_large``
    ``backbone``: ResNet with ``layer3``/``layer4`` dilated (output stride 8), or the dilated
    MobileNetV3-Large (16); ``classifier``: DeepLab-v3 (Chen et al. 2017): ``0`` ASPP (``convs.0`` 1x1,
    ``convs.1-3`` 3x3 at rates 12/24/36, ``convs.4`` global mean + 1x1 conv, each + BN + ReLU;
    ``project`` 1x1 + BN + ReLU + dropout 0.5), ``1-3`` 3x3 conv + BN + ReLU, ``4`` the 1x1 classifier.
``fcn_resnet50`` / ``fcn_resnet101``
    the same ResNets; ``classifier``: FCN head (3x3 conv to a quarter of the channels + BN + ReLU,
    dropout 0.1, 1x1 classifier).
``segformer``
    :mod:`edgeda.models.segformer` (``segformer.*``, ``decode_head.*``); ``variant`` ``b0`` .. ``b5``.

Options: ``aux=True`` adds torchvision's auxiliary FCN head ``aux_classifier`` (on ``layer3``, or
``c2`` for MobileNetV3) so a checkpoint that has one loads with nothing left over; edgeda's losses do
not use it and it ships unchanged. ``output_stride`` (ResNets 8 / 16 / 32; MobileNetV3 16 / 32),
``width`` (every channel count, for small CPU models; 1.0 for the public weights), ``channels``,
``dropout`` (the head's dropout where the public head has one), SegFormer ``drop_path``. The image-level
ASPP branch has BatchNorm as in torchvision, so training a DeepLab-v3 needs batches of two or more.
Outputs follow :class:`~edgeda.models.dense.DenseModel` (logits or metric depth at the input size).
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import EdgedaError
from . import segformer as sf
from .dense import OTHER_ARCHS, DenseModel, _scaled, check_dense_args
from .mobilenetv3 import MobileNetV3Features
from .resnet import ENCODERS as RESNETS

PUBLIC_ARCHS = {  # arch: (family, encoder)
    "lraspp_mobilenet_v3_large": ("lraspp", "large"),
    "lraspp_mobilenet_v3_small": ("lraspp", "small"),
    "deeplabv3_resnet50": ("deeplabv3", "resnet50"),
    "deeplabv3_resnet101": ("deeplabv3", "resnet101"),
    "deeplabv3_mobilenet_v3_large": ("deeplabv3", "large"),
    "fcn_resnet50": ("fcn", "resnet50"),
    "fcn_resnet101": ("fcn", "resnet101"),
    "segformer": ("segformer", None),
}


class GlobalMean(nn.Module):
    """``AdaptiveAvgPool2d(1)`` written as a mean (exports with dynamic height and width)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3), keepdim=True)


def _cbr(cin: int, cout: int, k: int = 1, dilation: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, padding=(k // 2) * dilation, dilation=dilation, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class LRASPPHead(nn.Module):
    def __init__(self, low: int, high: int, num_outputs: int, inter: int):
        super().__init__()
        self.cbr = nn.Sequential(*_cbr(high, inter))
        self.scale = nn.Sequential(GlobalMean(), nn.Conv2d(high, inter, 1, bias=False), nn.Sigmoid())
        self.low_classifier = nn.Conv2d(low, num_outputs, 1)
        self.high_classifier = nn.Conv2d(inter, num_outputs, 1)

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        low, high = feats["c2"], feats["out"]
        x = self.cbr(high) * self.scale(high)
        x = nn.functional.interpolate(x, size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.low_classifier(low) + self.high_classifier(x)


class ASPP(nn.Module):
    """torchvision's ASPP; the image-level branch's 1x1 map is broadcast (what its bilinear resize of a 1x1 map gives)."""

    def __init__(self, cin: int, cout: int, rates=(12, 24, 36)):
        super().__init__()
        branches = [nn.Sequential(*_cbr(cin, cout))] + [nn.Sequential(*_cbr(cin, cout, 3, r)) for r in rates]
        branches.append(nn.Sequential(GlobalMean(), *_cbr(cin, cout)))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(*_cbr(len(branches) * cout, cout), nn.Dropout(0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [conv(x) for conv in self.convs]
        outs[-1] = outs[-1].expand(-1, -1, x.shape[2], x.shape[3])
        return self.project(torch.cat(outs, dim=1))


class LevelHead(nn.Sequential):
    """An ``nn.Sequential`` head (torchvision's numbered names) applied to one encoder level."""

    def __init__(self, level: str, *layers: nn.Module):
        super().__init__(*layers)
        self.level = level

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        x = feats[self.level]
        for layer in self:
            x = layer(x)
        return x


def deeplabv3_head(level: str, cin: int, num_outputs: int, c: int) -> LevelHead:
    return LevelHead(level, ASPP(cin, c), *_cbr(c, c, 3), nn.Conv2d(c, num_outputs, 1))


def fcn_head(level: str, cin: int, num_outputs: int, dropout: float) -> LevelHead:
    return LevelHead(level, *_cbr(cin, cin // 4, 3), nn.Dropout(dropout), nn.Conv2d(cin // 4, num_outputs, 1))


class PublicDenseModel(DenseModel):
    """A dense model in a public layout (see the module docstring). ``encoder`` and ``head`` name the
    public modules (``backbone``/``classifier``, or ``segformer``/``decode_head``), so everything written
    for :class:`DenseModel` (outputs, parameter groups, feature-level methods) applies unchanged."""

    def __init__(self, arch: str, num_outputs: int, output: str = "logits", channels: int = 3, width: float = 1.0,
                 output_stride: int | None = None, aux: bool = False, variant: str = "b0", dropout: float | None = None,
                 drop_path: float = 0.1, min_depth: float = 0.1, max_depth: float = 80.0,
                 encoder: str | None = None, encoder_kwargs: dict | None = None):
        nn.Module.__init__(self)
        if arch not in PUBLIC_ARCHS:
            raise EdgedaError(f"unknown public dense arch {arch!r}; valid: {', '.join(PUBLIC_ARCHS)}")
        family, enc = PUBLIC_ARCHS[arch]
        if encoder is not None or encoder_kwargs:
            raise EdgedaError(f"the {arch} dense model has its own encoder (its name says which); drop encoder={encoder!r}")
        check_dense_args(num_outputs, output, channels, width, 0.1 if dropout is None else dropout, min_depth, max_depth)
        if not isinstance(aux, bool):
            raise EdgedaError(f"dense_model aux must be true or false, not {aux!r}")
        if aux and family not in ("deeplabv3", "fcn"):
            raise EdgedaError(f"the {arch} dense model has no auxiliary head (aux is for deeplabv3_* and fcn_*)")
        if family == "segformer":
            if output_stride not in (None, 32):
                raise EdgedaError(f"segformer has output stride 32, not {output_stride!r}")
            if width != 1.0:
                raise EdgedaError("segformer sizes come from its variant (b0 .. b5), not width")
            self.segformer = sf.SegformerEncoder(variant, channels, drop_path)
            self.decode_head = sf.SegformerDecodeHead(sf.widths_of(variant), num_outputs, sf.decoder_width(variant),
                                                      0.1 if dropout is None else dropout)
            self._parts = ("segformer", "decode_head")
            final = ["decode_head.classifier"]
        else:
            self.backbone = self._backbone(arch, enc, channels, width, output_stride)
            info = self.backbone.feature_info
            aux_level = "c2" if enc in ("large", "small") else "layer3"
            if family == "lraspp":
                self.classifier = LRASPPHead(info["c2"]["channels"], info["out"]["channels"], num_outputs,
                                             _scaled(128, width, minimum=8))
                final = ["classifier.low_classifier", "classifier.high_classifier"]
            elif family == "deeplabv3":
                self.classifier = deeplabv3_head("out", info["out"]["channels"], num_outputs, _scaled(256, width, minimum=8))
                final = ["classifier.4"]
            else:
                self.classifier = fcn_head("out", info["out"]["channels"], num_outputs, 0.1 if dropout is None else dropout)
                final = ["classifier.4"]
            if aux:
                self.aux_classifier = fcn_head(aux_level, info[aux_level]["channels"], num_outputs, 0.1)
                final.append("aux_classifier.4")
            self._parts = ("backbone", "classifier")
        self._final = final
        modules = dict(self.named_modules())
        self._set_outputs(arch, num_outputs, output, min_depth, max_depth, [modules[name] for name in final])

    @staticmethod
    def _backbone(arch: str, enc: str, channels: int, width: float, output_stride: int | None) -> nn.Module:
        if enc in ("large", "small"):
            if output_stride not in (None, 16, 32):
                raise EdgedaError(f"{arch} output_stride must be 16 (dilated, as torchvision) or 32, not {output_stride!r}")
            return MobileNetV3Features(enc, channels, width, dilated=output_stride in (None, 16))
        return RESNETS[enc](channels, width=_scaled(64, width, minimum=4), output_stride=8 if output_stride is None else output_stride)

    @property
    def encoder(self) -> nn.Module:
        return self._modules[self._parts[0]]

    @property
    def head(self) -> nn.Module:
        return self._modules[self._parts[1]]

    def output_keys(self) -> list[str]:
        return [f"{name}.{p}" for name in self._final for p in ("weight", "bias")]

    def optional_keys(self) -> list[str]:
        """Tensors a whole-model checkpoint may lack: the auxiliary head (then left at its initialisation)."""
        return [k for k in self.state_dict() if k.startswith("aux_classifier.")]

    def convert_checkpoint(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Other layouts of the same weights renamed to this model's (SegFormer: :func:`~edgeda.models.segformer.to_hub_names`)."""
        return sf.to_hub_names(state) if self.arch == "segformer" else state


OTHER_ARCHS.update(dict.fromkeys(PUBLIC_ARCHS, PublicDenseModel))

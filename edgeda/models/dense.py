"""Dense prediction models (semantic segmentation logits, monocular metric depth): encoder + head.

Encoder contract
----------------
Every encoder used by a dense model is an ``nn.Module`` with

``forward_features(x) -> Tensor``
    the unpooled final feature map ``(N, C, h, w)``;
``forward_intermediates(x) -> dict[str, Tensor]``
    named levels from high to low resolution, the final map included as ``"out"`` (ResNets:
    ``stem``, ``layer1`` .. ``layer4``; the U-Net encoder: ``stride1`` .. ``stride16``; the
    MobileNetV3-style encoder: ``stem``, ``stage1`` .. ``stage4``; DTN: ``stride2`` .. ``stride8``;
    SmallResNet: ``stem``, ``stage1`` .. ``stage3``);
``out_channels: int``
    the channels of ``"out"``;
``feature_info: dict[str, dict]``
    ``{"channels": c, "stride": s}`` for every level name ``forward_intermediates`` returns
    (strides are exact for inputs whose sides are multiples of 32).

Pooling belongs to heads. Learning-rate groups come from the model: ``param_groups(lr,
encoder_lr_mult)`` separates the encoder's parameters from the rest, so a pre-trained encoder
(:func:`edgeda.models.weights.load_backbone_weights` on ``model.encoder``) can learn slower.

Models
------
Built as ``build("dense_model", arch=..., num_outputs=..., ...)`` (or :func:`make_dense_model`);
every keyword is JSON-serialisable so a bundle rebuilds the model from its record.

``arch="unet"``
    a small U-Net: five resolutions (four max-pool downsamplings), each a double 3x3 conv + BN +
    ReLU with ``32 * width`` .. ``512 * width`` channels; the decoder upsamples bilinearly,
    concatenates the skip and applies a double conv; a 1x1 classifier at full resolution.
``arch="deeplab"``
    DeepLab-v3: a ResNet encoder (``encoder`` ``"resnet18"`` / ``"resnet34"`` / ``"resnet50"``,
    default ``"resnet50"``; ``output_stride`` 16 by default, 8 or 32 optional) with base width
    ``64 * width`` (``width=1`` for public ImageNet weights); ASPP with a 1x1 branch, three atrous
    3x3 branches at rates 6/12/18 scaled by ``16 / output_stride`` and an image-level branch on the
    global mean (no BatchNorm there, so batch-1 training works), all ``256 * width`` channels,
    projected by a 1x1 conv. With ``decoder=True`` (default) the DeepLab-v3+ decoder follows: the
    ``layer1`` map (stride 4) reduced to ``48 * width`` channels by a 1x1 conv, concatenated with the
    upsampled ASPP output, two 3x3 convs. Without it, one 3x3 conv. Then a 1x1 classifier.
``arch="lraspp"``
    an edge model: a MobileNetV3-Small-style encoder (inverted residual blocks with depthwise
    convs, squeeze-excitation with hard-sigmoid gates, hardswish; channels times ``width``, rounded
    to multiples of 8; the last stage dilated for ``output_stride`` 16, the default, or strided
    for 32) and the LR-ASPP head: a 1x1 conv + BN + ReLU branch (``128 * width`` channels)
    multiplied by a sigmoid attention computed from the global mean of the final map, upsampled to
    the stride-8 level, classified by a 1x1 conv and added to a 1x1 classifier of the stride-8 map.

The layouts of public checkpoints (torchvision's ``lraspp_mobilenet_v3_large``, ``deeplabv3_resnet50``,
``fcn_resnet50`` ..., Hugging Face ``segformer``) are further archs of the same model, built by
:mod:`edgeda.models.public_dense` with the public parameter names.

Every head's output is bilinearly upsampled (``align_corners=False``) to the input size, and all
pooling is a global mean, so the models export to ONNX with dynamic batch, height and width.

Outputs
-------
``forward(x)`` is ``(N, num_outputs, H, W)`` at the input resolution: raw logits for
``output="logits"``; for ``output="depth"`` positive metric depth in metres,
``exp(z + log sqrt(min_depth * max_depth))``: the head predicts log-depth around the geometric middle
of the range (defaults 0.1 .. 80 m, middle ~2.8 m), so the scale-invariant log loss sees a gradient
of one per unit of log-depth wherever the prediction is (a sigmoid-bounded head saturates at the
range's ends after one large step and stops learning). The depth head's output convs start at zero,
so an untrained model predicts the middle everywhere: with the default initialisation its
log-depth reached +-60 (depth beyond float32) and a training loss on depth became infinite within
three steps on some seeds. In eval mode (and so in every export) the
log-depth is clipped to the range, so outputs lie in ``[min_depth, max_depth]``; the upsampling acts
on ``z`` first.
``features_and_logits(x)`` returns ``(encoder final map, output)`` for feature-level adaptation
(domain classifiers on the map); ``forward_intermediates(x)`` is the encoder's. Attributes:
``encoder``, ``head``, ``num_outputs``, ``output``, ``feature_channels``, ``output_name``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import EdgedaError
from .registry import ARCHITECTURES, build
from .resnet import ENCODERS as RESNETS

ARCHS = ("unet", "deeplab", "lraspp")
# further archs built by other classes (the public-checkpoint layouts of public_dense register here)
OTHER_ARCHS: dict[str, type] = {}
OUTPUTS = ("logits", "depth")


def _scaled(c: int, width: float, divisor: int = 1, minimum: int = 4) -> int:
    """``c * width`` rounded to a multiple of ``divisor`` (not below 90% of the exact value), at least ``minimum``."""
    v = c * width
    if divisor == 1:
        return max(minimum, int(round(v)))
    out = max(minimum, divisor, int(v + divisor / 2) // divisor * divisor)
    return out + divisor if out < 0.9 * v else out


def _up(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


def _cbr(cin: int, cout: int, k: int = 3, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, 1, (k // 2) * dilation, dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _init(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# ---------------------------------------------------------------------------------------- U-Net


class DoubleConv(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(_cbr(cin, cout), _cbr(cout, cout))


class UNetEncoder(nn.Module):
    """Contracting path: a double conv at full resolution, then four (max-pool, double conv) levels."""

    def __init__(self, channels: int = 3, base: int = 32):
        super().__init__()
        chs = [base * 2 ** i for i in range(5)]
        self.inc = DoubleConv(channels, chs[0])
        self.down = nn.ModuleList(DoubleConv(chs[i], chs[i + 1]) for i in range(4))
        self.pool = nn.MaxPool2d(2)
        self.level_names = [f"stride{2 ** i}" for i in range(5)]
        self.feature_info = {n: {"channels": c, "stride": 2 ** i} for i, (n, c) in enumerate(zip(self.level_names, chs))}
        self.feature_info["out"] = dict(self.feature_info["stride16"])
        self.out_channels = chs[-1]
        _init(self)

    def forward_intermediates(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.inc(x)
        out = {"stride1": x}
        for name, block in zip(self.level_names[1:], self.down):
            x = block(self.pool(x))
            out[name] = x
        out["out"] = x
        return out

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inc(x)
        for block in self.down:
            x = block(self.pool(x))
        return x


class UNetHead(nn.Module):
    def __init__(self, encoder: UNetEncoder, num_outputs: int, dropout: float):
        super().__init__()
        names = encoder.level_names
        chs = [encoder.feature_info[n]["channels"] for n in names]
        self.skips = names[:-1][::-1]
        self.up = nn.ModuleList(DoubleConv(chs[i + 1] + chs[i], chs[i]) for i in reversed(range(4)))
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Conv2d(chs[0], num_outputs, 1)
        _init(self)

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        x = feats["out"]
        for name, block in zip(self.skips, self.up):
            skip = feats[name]
            x = block(torch.cat([_up(x, skip), skip], dim=1))
        return self.classifier(self.dropout(x))


# ------------------------------------------------------------------------------------- DeepLab


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling; the image-level branch pools with a global mean."""

    def __init__(self, cin: int, cout: int, rates: tuple[int, ...]):
        super().__init__()
        self.convs = nn.ModuleList([_cbr(cin, cout, 1)] + [_cbr(cin, cout, 3, r) for r in rates])
        self.pool = nn.Sequential(nn.Conv2d(cin, cout, 1), nn.ReLU(inplace=True))
        self.project = _cbr((len(rates) + 2) * cout, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [conv(x) for conv in self.convs]
        pooled = self.pool(x.mean(dim=(2, 3), keepdim=True))
        outs.append(pooled.expand(-1, -1, x.shape[2], x.shape[3]))
        return self.project(torch.cat(outs, dim=1))


class DeepLabHead(nn.Module):
    def __init__(self, encoder: nn.Module, num_outputs: int, width: float, decoder: bool, dropout: float):
        super().__init__()
        info = encoder.feature_info
        stride = info["out"]["stride"]
        c = _scaled(256, width, minimum=8)
        rates = tuple(max(1, int(round(r * 16 / stride))) for r in (6, 12, 18))
        self.aspp = ASPP(info["out"]["channels"], c, rates)
        self.decoder = bool(decoder)
        if self.decoder:
            low = _scaled(48, width, minimum=4)
            self.reduce = _cbr(info["layer1"]["channels"], low, 1)
            self.fuse = nn.Sequential(_cbr(c + low, c), _cbr(c, c))
        else:
            self.fuse = _cbr(c, c)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Conv2d(c, num_outputs, 1)
        _init(self)

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        x = self.aspp(feats["out"])
        if self.decoder:
            low = self.reduce(feats["layer1"])
            x = torch.cat([_up(x, low), low], dim=1)
        return self.classifier(self.dropout(self.fuse(x)))


# ------------------------------------------------------------------------- MobileNetV3 / LR-ASPP

# (kernel, expanded channels, output channels, squeeze-excitation, activation, stride) per block,
# grouped by stage; MobileNetV3-Small's layout.
MOBILENET_V3_SMALL = (
    ((3, 16, 16, True, "relu", 2),),
    ((3, 72, 24, False, "relu", 2), (3, 88, 24, False, "relu", 1)),
    ((5, 96, 40, True, "hardswish", 2), (5, 240, 40, True, "hardswish", 1), (5, 240, 40, True, "hardswish", 1),
     (5, 120, 48, True, "hardswish", 1), (5, 144, 48, True, "hardswish", 1)),
    ((5, 288, 96, True, "hardswish", 2), (5, 576, 96, True, "hardswish", 1), (5, 576, 96, True, "hardswish", 1)),
)
STEM_CHANNELS, LAST_CHANNELS = 16, 576


def _act(name: str) -> nn.Module:
    return nn.Hardswish() if name == "hardswish" else nn.ReLU(inplace=True)


def _conv_bn_act(cin: int, cout: int, k: int, stride: int = 1, dilation: int = 1, groups: int = 1,
                 act: str | None = "relu") -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, k, stride, (k // 2) * dilation, dilation=dilation, groups=groups, bias=False),
              nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(_act(act))
    return nn.Sequential(*layers)


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, squeeze: int):
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeeze, 1)
        self.act = nn.ReLU(inplace=True)
        self.expand = nn.Conv2d(squeeze, channels, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(2, 3), keepdim=True)
        return x * self.gate(self.expand(self.act(self.reduce(s))))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, k: int, exp: int, cout: int, se: bool, act: str, stride: int, dilation: int):
        super().__init__()
        self.expand = _conv_bn_act(cin, exp, 1, act=act) if exp != cin else nn.Identity()
        self.depthwise = _conv_bn_act(exp, exp, k, stride, dilation, groups=exp, act=act)
        self.se = SqueezeExcite(exp, _scaled(exp, 0.25, 8, 8)) if se else nn.Identity()
        self.project = _conv_bn_act(exp, cout, 1, act=None)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.se(self.depthwise(self.expand(x))))
        return x + out if self.residual else out


class MobileNetV3Encoder(nn.Module):
    """MobileNetV3-Small-style trunk: stem, four stages of inverted residual blocks, a final 1x1 conv."""

    def __init__(self, channels: int = 3, width: float = 1.0, output_stride: int = 16):
        super().__init__()
        if output_stride not in (16, 32):
            raise EdgedaError(f"lraspp output_stride must be 16 or 32, not {output_stride!r}")
        cin = _scaled(STEM_CHANNELS, width, 8, 8)
        self.stem = _conv_bn_act(channels, cin, 3, 2, act="hardswish")
        self.feature_info = {"stem": {"channels": cin, "stride": 2}}
        stride_so_far, stages = 2, []
        for i, cfg in enumerate(MOBILENET_V3_SMALL):
            dilated = i == len(MOBILENET_V3_SMALL) - 1 and output_stride == 16
            blocks = []
            for j, (k, exp, cout, se, act, stride) in enumerate(cfg):
                exp_c, out_c = _scaled(exp, width, 8, 8), _scaled(cout, width, 8, 8)
                if dilated:
                    blocks.append(InvertedResidual(cin, k, exp_c, out_c, se, act, 1, 2))
                else:
                    blocks.append(InvertedResidual(cin, k, exp_c, out_c, se, act, stride, 1))
                    stride_so_far *= stride
                cin = out_c
            stages.append(nn.Sequential(*blocks))
            self.feature_info[f"stage{i + 1}"] = {"channels": cin, "stride": stride_so_far}
        self.stages = nn.ModuleList(stages)
        last = _scaled(LAST_CHANNELS, width, 8, 8)
        self.last = _conv_bn_act(cin, last, 1, act="hardswish")
        self.feature_info["out"] = {"channels": last, "stride": stride_so_far}
        self.out_channels = last
        self.output_stride = output_stride
        _init(self)

    def forward_intermediates(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.stem(x)
        out = {"stem": x}
        for i, stage in enumerate(self.stages):
            x = stage(x)
            out[f"stage{i + 1}"] = x
        out["out"] = self.last(x)
        return out

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.last(x)


class LRASPPHead(nn.Module):
    def __init__(self, encoder: MobileNetV3Encoder, num_outputs: int, width: float, dropout: float):
        super().__init__()
        high, low = encoder.feature_info["out"]["channels"], encoder.feature_info["stage2"]["channels"]
        inter = _scaled(128, width, minimum=8)
        self.cbr = _cbr(high, inter, 1)
        self.scale = nn.Sequential(nn.Conv2d(high, inter, 1), nn.Sigmoid())
        self.dropout = nn.Dropout(dropout)
        self.low_classifier = nn.Conv2d(low, num_outputs, 1)
        self.high_classifier = nn.Conv2d(inter, num_outputs, 1)
        _init(self)

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        high, low = feats["out"], feats["stage2"]
        x = self.cbr(high) * self.scale(high.mean(dim=(2, 3), keepdim=True))
        x = _up(x, low)
        return self.low_classifier(low) + self.high_classifier(self.dropout(x))


# ----------------------------------------------------------------------------------- the model


def _positive_int(name: str, v) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise EdgedaError(f"dense_model {name} must be a positive integer, not {v!r}")
    return v


def check_dense_args(num_outputs, output, channels, width, dropout, min_depth, max_depth) -> None:
    """The checks every dense model shares (one clear error for a bad value)."""
    if output not in OUTPUTS:
        raise EdgedaError(f"unknown dense output {output!r}; valid: {', '.join(OUTPUTS)}")
    _positive_int("num_outputs", num_outputs)
    _positive_int("channels", channels)
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not 0 < width <= 16:
        raise EdgedaError(f"dense_model width must be a number in (0, 16], not {width!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise EdgedaError(f"dense_model dropout must be in [0, 1), not {dropout!r}")
    if output == "depth":
        ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (min_depth, max_depth))
        if not ok or not 0 < min_depth < max_depth:
            raise EdgedaError(f"dense_model depth range needs 0 < min_depth < max_depth, not {min_depth!r} .. {max_depth!r}")


class DenseModel(nn.Module):
    """``output = upsample(head(encoder.forward_intermediates(x)))``; see the module docstring."""

    def __init__(self, arch: str, num_outputs: int, output: str = "logits", channels: int = 3, width: float = 1.0,
                 encoder: str | None = None, encoder_kwargs: dict | None = None, output_stride: int | None = None,
                 decoder: bool = True, min_depth: float = 0.1, max_depth: float = 80.0, dropout: float = 0.1):
        super().__init__()
        if arch not in ARCHS:
            raise EdgedaError(f"unknown dense arch {arch!r}; valid: {', '.join(ARCHS + tuple(OTHER_ARCHS))}")
        check_dense_args(num_outputs, output, channels, width, dropout, min_depth, max_depth)
        if encoder_kwargs is not None and not isinstance(encoder_kwargs, dict):
            raise EdgedaError(f"dense_model encoder_kwargs must be a dict, not {type(encoder_kwargs).__name__}")
        ekw = dict(encoder_kwargs or {})
        if arch == "unet":
            if encoder not in (None, "unet"):
                raise EdgedaError(f"the unet dense model has its own encoder, not {encoder!r}")
            if output_stride not in (None, 16):
                raise EdgedaError(f"the unet dense model has output stride 16, not {output_stride!r}")
            self.encoder = UNetEncoder(channels, **{"base": _scaled(32, width, minimum=4), **ekw})
            self.head = UNetHead(self.encoder, num_outputs, dropout)
        elif arch == "deeplab":
            name = encoder or "resnet50"
            if name not in RESNETS:
                raise EdgedaError(f"unknown deeplab encoder {name!r}; valid: {', '.join(RESNETS)}")
            base = {"width": _scaled(64, width, minimum=4), "output_stride": 16 if output_stride is None else output_stride}
            self.encoder = RESNETS[name](channels, **{**base, **ekw})
            self.head = DeepLabHead(self.encoder, num_outputs, width, decoder, dropout)
        else:
            if encoder not in (None, "mobilenetv3_small"):
                hint = f"; torchvision's layout is --backbone lraspp_{encoder}" if encoder in ("mobilenet_v3_large", "mobilenet_v3_small") else ""
                raise EdgedaError(f"the lraspp dense model has a MobileNetV3-Small-style encoder, not {encoder!r}{hint}")
            base = {"width": width, "output_stride": 16 if output_stride is None else output_stride}
            self.encoder = MobileNetV3Encoder(channels, **{**base, **ekw})
            self.head = LRASPPHead(self.encoder, num_outputs, width, dropout)
        self._set_outputs(arch, num_outputs, output, min_depth, max_depth,
                          [m for name, m in self.head.named_modules() if name.endswith("classifier") and isinstance(m, nn.Conv2d)])

    def _set_outputs(self, arch: str, num_outputs: int, output: str, min_depth: float, max_depth: float,
                     final: list[nn.Module]) -> None:
        """Record what the model predicts; a depth model's ``final`` layers start at zero, so that its first
        prediction is the middle of the (log) depth range: see the module docstring."""
        self.arch = arch
        self.num_outputs = num_outputs
        self.output = output
        self.output_name = output
        self.feature_channels = self.encoder.out_channels
        self.min_depth, self.max_depth = float(min_depth), float(max_depth)
        if output == "depth":
            for m in final:
                nn.init.zeros_(m.weight)
                nn.init.zeros_(m.bias)

    def _run(self, x: torch.Tensor, log_output: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.encoder.forward_intermediates(x)
        z = F.interpolate(self.head(feats), size=x.shape[-2:], mode="bilinear", align_corners=False)
        if self.output == "depth":
            lo, hi = math.log(self.min_depth), math.log(self.max_depth)
            log_depth = 0.5 * (lo + hi) + z
            if not self.training:  # the clip is for inference only: in training it would stop gradients
                log_depth = log_depth.clamp(lo, hi)
            z = log_depth if log_output else torch.exp(log_depth)
        return feats["out"], z

    def features_and_log_depth(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Depth models: (the encoder's final map, log-depth (N, 1, H, W)) -- for losses on log-depth,
        which stay finite where an untrained head's depth would overflow float32."""
        if self.output != "depth":
            raise ValueError("features_and_log_depth is for depth models")
        return self._run(x, log_output=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x)[1]

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the encoder's final map (N, feature_channels, h, w), the output (N, num_outputs, H, W))."""
        return self._run(x)

    def forward_intermediates(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.encoder.forward_intermediates(x)

    def output_keys(self) -> list[str]:
        """The tensors whose shape depends on ``num_outputs`` (the head's final 1x1 convs): what a
        checkpoint with another class count leaves at its initialisation."""
        return [f"head.{n}.{p}" for n, m in self.head.named_modules() if n.endswith("classifier") for p in ("weight", "bias")]

    def param_groups(self, lr: float, encoder_lr_mult: float = 1.0) -> list[dict]:
        """Optimizer parameter groups: the encoder at ``lr * encoder_lr_mult``, everything else at ``lr``."""
        enc = list(self.encoder.parameters())
        ids = {id(p) for p in enc}
        rest = [p for p in self.parameters() if id(p) not in ids]
        return [{"params": enc, "lr": lr * encoder_lr_mult, "name": "encoder"},
                {"params": rest, "lr": lr, "name": "head"}]


@ARCHITECTURES.register("dense_model")
def dense_model(**kwargs) -> DenseModel:
    """A :class:`DenseModel`; the archs in the layouts of public checkpoints (torchvision's
    segmentation models, SegFormer) are built by the class :mod:`edgeda.models.public_dense` registers."""
    return OTHER_ARCHS.get(kwargs.get("arch"), DenseModel)(**kwargs)


def make_dense_model(arch: str, num_outputs: int, output: str, channels: int = 3, **kw) -> DenseModel:
    """``build("dense_model", ...)``: a dense model that ships (its kwargs are recorded for rebuilding)."""
    return build("dense_model", arch=arch, num_outputs=num_outputs, output=output, channels=channels, **kw)

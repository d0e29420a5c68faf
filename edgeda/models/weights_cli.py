"""``edgeda weights import``: convert a public checkpoint once into an edgeda ``.safetensors`` file.

The file is read as ``--backbone-weights`` reads it (:func:`edgeda.models.weights.load_pretrained`:
safetensors or ``torch.load(weights_only=True)``, never a full unpickle), loaded into the named
architecture, written as that model's state dict (its own names), then read back into a fresh model
to check the load; what matched is printed.
"""
from __future__ import annotations

from pathlib import Path

import click

from ..console import emit_json, handle_errors
from ..errors import EdgedaError
from . import BACKBONES, build
from .dense import ARCHS
from .detection import DETECTORS
from .public_dense import PUBLIC_ARCHS
from .weights import checkpoint_classes, describe, load_pretrained, options_for_weights


def build_for_import(arch: str, num_classes: int, channels: int, options: dict):
    """A dense model (``lraspp_mobilenet_v3_large``, ``segformer``, ``deeplab`` ...), a detector
    (``ssdlite``, ``fcos``: ``num_classes`` without the background class, so torchvision's 91-way COCO
    heads are 90 classes) or a classifier on a registered backbone (``resnet50``, ``mobilenet_v3_large`` ...)
    of ``arch``."""
    if arch in ARCHS or arch in PUBLIC_ARCHS:
        return build("dense_model", arch=arch, num_outputs=num_classes, output="logits", channels=channels, **options)
    if arch in DETECTORS:
        return build("detector", arch=arch, num_classes=num_classes, channels=channels, **options)
    if arch in BACKBONES:
        return build("classifier", backbone=arch, num_classes=num_classes, channels=channels, image_size=224,
                     backbone_kwargs=options)
    raise EdgedaError(f"unknown --arch {arch!r}; dense: {', '.join(ARCHS + tuple(PUBLIC_ARCHS))}; "
                      f"detectors: {', '.join(DETECTORS)}; classification backbones: {', '.join(BACKBONES)}")


def import_weights(file: str | Path, arch: str, out: str | Path, num_classes: int | None = None, channels: int = 3,
                   options: dict | None = None) -> dict:
    """Convert ``file`` for ``arch`` and write ``out`` (``.safetensors``); returns the load report plus
    ``out``, ``num_classes`` and the check of the written file."""
    from safetensors.torch import save_file

    out = Path(out)
    if out.suffix != ".safetensors":
        raise EdgedaError(f"--out {out}: the converted weights are written as .safetensors")
    options = options_for_weights(arch, dict(options or {}), file)
    if num_classes is None:
        num_classes = checkpoint_classes(build_for_import(arch, 1, channels, options), file)
        if num_classes is None:
            raise EdgedaError(f"{file} holds no output layer for {arch} (an encoder-only checkpoint): give --num-classes")
    model = build_for_import(arch, num_classes, channels, options)
    report = load_pretrained(model, file)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(tmp))
    tmp.replace(out)
    check = load_pretrained(build_for_import(arch, num_classes, channels, options), out)
    if check["missing"] or check["unexpected"] or check["reinitialised"]:
        raise EdgedaError(f"the written file {out} does not load back cleanly into {arch}")
    return {**report, "arch": arch, "num_classes": num_classes, "options": options, "out": str(out),
            "check": {"loaded": check["loaded"]}}


@click.group()
def weights() -> None:
    """Pre-trained weights: convert public checkpoints (torchvision, Hugging Face, mmsegmentation)."""


@weights.command("import")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--arch", required=True, help="e.g. lraspp_mobilenet_v3_large, deeplabv3_resnet50, fcn_resnet50, segformer, "
                                             "resnet50, mobilenet_v3_large, ssdlite, fcos")
@click.option("--num-classes", type=int, help="classes of the model (default: the checkpoint's; needed for encoder-only files; "
                                              "detectors count no background: torchvision's COCO heads are 90)")
@click.option("--channels", type=int, default=3, show_default=True, help="input channels (1: RGB first conv summed)")
@click.option("--backbone-option", "backbone_options", multiple=True, help="architecture setting key=value, e.g. variant=b2")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="the .safetensors file to write")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def import_cmd(file, arch, num_classes, channels, backbone_options, out, as_json) -> None:
    """Convert FILE (.safetensors, .pth, .pt, .bin) into edgeda's names for --arch, check the load, print what matched."""
    from ..config import parse_option

    rep = import_weights(file, arch, out, num_classes, channels, dict(parse_option(o) for o in backbone_options))
    if as_json:
        emit_json(rep)
        return
    for line in describe(rep):
        click.echo(line)
    opts = "".join(f" --backbone-option {k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in rep["options"].items())

    task = "--task detection " if arch in DETECTORS else ""
    click.echo(f"{arch} with {rep['num_classes']} classes: {rep['check']['loaded']} tensors written to {rep['out']} "
               f"(sha256 of the source {rep['sha256'][:12]}...); use it with {task}--backbone {arch}{opts} "
               f"--backbone-weights {rep['out']}")

"""Pre-trained weights from a user's file (``--backbone-weights``, ``edgeda weights import``); never a full unpickle.

Reading (:func:`read_state_dict`): ``.safetensors`` through safetensors; ``.pth``/``.pt``/``.bin``
through ``torch.load(..., weights_only=True)``, which rebuilds only tensors and plain containers
and refuses any other pickled object (that file is refused with one sentence); any other suffix is
refused. A checkpoint that wraps its state dict (``{"state_dict": ...}``, ``{"model": ...}``) is
unwrapped; entries that are not tensors (epoch counters, configs) are ignored.

Matching a whole model (:func:`load_pretrained`): each file name is tried as it is, then as the
model renames it (``model.convert_checkpoint(state)`` renames whole layouts, e.g. SegFormer's
transformers-5 and mmsegmentation names; ``model.checkpoint_key(key)`` renames one key, e.g. a
torchvision classifier's ``fc`` -> ``head``), then stripped of wrapper prefixes (``module.``,
``backbone.``, ``encoder.``, ``features.``, ``segformer.``, ``model.``) and placed under the model's encoder
-- so an encoder-only checkpoint (torchvision ImageNet classifiers, ``nvidia/mit-b0``) is recognised
by its prefix. Then:

* the encoder must be complete: a missing encoder tensor is an error that lists them (a model whose
  encoder-only checkpoints cover less than its ``encoder`` names that part with
  ``model.encoder_only_keys()``: a detector's classification trunk, without SSDLite's extra layers or
  FCOS's pyramid);
* whole-model checkpoints (some tensor lands outside the encoder) must also supply every head
  tensor, except the class-count-dependent output layers (``model.output_keys()``): where their
  shape differs (another class count) they keep their initialisation and the report says so;
  ``model.optional_keys()`` (torchvision's auxiliary head) may be absent;
* an encoder-only checkpoint leaves the head at its initialisation (reported);
* a 1-channel model takes 3-channel first-conv weights summed over RGB; any other shape
  difference is an error naming the tensor and both shapes; ``num_batches_tracked`` is optional.

The report: ``{"file", "sha256", "kind": "whole model" | "encoder only", "loaded", "missing",
"unexpected", "reinitialised", "head"}``. :func:`load_backbone_weights` is the older encoder-level
loader (a file covering at least half of the encoder's tensors is accepted).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import EdgedaError
from ..utils import sha256_file

PREFIXES = ("module.", "backbone.", "encoder.", "features.", "segformer.", "model.")
_OPTIONAL_SUFFIX = "num_batches_tracked"
TORCH_SUFFIXES = (".pth", ".pt", ".bin")
WRAPPERS = ("state_dict", "model", "model_state", "model_state_dict", "module", "net")
PRETRAINED_ENCODER_LR = 0.1  # encoder_lr of a method that offers it, when --backbone-weights are given


def _candidates(key: str) -> list[str]:
    """``key`` and the forms with leading wrapper prefixes stripped one at a time."""
    out = [key]
    while True:
        for p in PREFIXES:
            if key.startswith(p):
                key = key[len(p):]
                out.append(key)
                break
        else:
            return out


def _first_conv(state: dict[str, torch.Tensor]) -> str | None:
    return next((k for k, v in state.items() if v.dim() == 4 and k.endswith("weight")), None)


def _shape(t: torch.Tensor) -> str:
    return "(" + ", ".join(str(d) for d in t.shape) + ")"


def _tensors(obj) -> dict[str, torch.Tensor] | None:
    if not isinstance(obj, dict):
        return None
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    return tensors or None


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors``, ``.pth``, ``.pt`` or ``.bin`` file (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise EdgedaError(f"backbone weights file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
            first = (str(e).splitlines() or [type(e).__name__])[0][:160]
            raise EdgedaError(f"backbone weights file {path} is not a readable .safetensors file ({first})") from None
    if suffix not in TORCH_SUFFIXES:
        raise EdgedaError(f"backbone weights file {path}: expected .safetensors, .pth, .pt or .bin, not {suffix or 'no suffix'!r}")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - UnpicklingError, RuntimeError, EOFError ...
        first = (str(e).splitlines() or [type(e).__name__])[0][:120]
        raise EdgedaError(f"backbone weights file {path} is not a plain tensor checkpoint that torch.load(weights_only=True) "
                          f"accepts (it holds other pickled objects or is damaged: {first}); edgeda never unpickles "
                          "arbitrary objects, so save the state dict (torch.save(model.state_dict())) or a .safetensors file") from None
    state = _tensors(obj)
    if state is None and isinstance(obj, dict):
        state = next((t for t in (_tensors(obj.get(w)) for w in WRAPPERS) if t), None)
    if state is None:
        raise EdgedaError(f"backbone weights file {path} holds no named tensors (expected a state dict)")
    return state


def _encoder_prefix(model: nn.Module) -> tuple[nn.Module, str]:
    encoder = getattr(model, "encoder", None) or getattr(model, "features", None)
    if encoder is None:
        raise EdgedaError(f"the {type(model).__name__} model has no encoder to load weights into")
    name = next((n for n, m in model.named_children() if m is encoder), None)
    if name is None:
        raise EdgedaError(f"the {type(model).__name__} model's encoder is not one of its modules")
    return encoder, name + "."


def _fit(key, tensor, name, want, first_conv, path):
    """``tensor`` shaped for ``want`` (a 1-channel first conv sums RGB), or None where only the
    class count differs (the caller decides), or an error."""
    if tensor.shape == want.shape:
        return tensor
    if (name == first_conv and tensor.dim() == 4 and want.shape[1] == 1 and tensor.shape[1] == 3
            and tensor.shape[0] == want.shape[0] and tensor.shape[2:] == want.shape[2:]):
        return tensor.sum(dim=1, keepdim=True)
    raise EdgedaError(f"backbone weights file {path}: tensor {key!r} has shape {_shape(tensor)} but the model's "
                      f"{name!r} has shape {_shape(want)} (a different architecture, width or channel count?)")


def _listing(keys: list[str], n: int = 8) -> str:
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")


def _pairs(model: nn.Module, source: dict, target: dict, prefix: str):
    """``(file key, model name or None, tensor)`` for each tensor of the file (see the module docstring)."""
    convert = getattr(model, "convert_checkpoint", None)
    if convert is not None:
        source = convert(source)
    rename = getattr(model, "checkpoint_key", None)
    taken: set[str] = set()
    for key, tensor in source.items():
        forms = [key] + ([rename(key)] if rename else []) + [prefix + f for f in _candidates(key)]
        name = next((f for f in forms if f in target and f not in taken), None)
        if name is not None:
            taken.add(name)
        yield key, name, tensor


def checkpoint_classes(model: nn.Module, path: str | Path) -> int | None:
    """The class count of the output layer a checkpoint holds for ``model``'s layout (None: encoder only);
    ``model.classes_in_checkpoint(state)`` decides where the model has it (a detector: ``K`` without the
    background column, from SSDLite's 6 boxes x ``K + 1`` logits per cell)."""
    target = model.state_dict()
    _, prefix = _encoder_prefix(model)
    named = {name: tensor for _, name, tensor in _pairs(model, read_state_dict(path), target, prefix) if name is not None}
    own = getattr(model, "classes_in_checkpoint", None)
    if own is not None:
        return own(named)
    outputs = list(getattr(model, "output_keys", lambda: [])())
    return int(named[outputs[0]].shape[0]) if outputs and outputs[0] in named else None


def load_pretrained(model: nn.Module, path: str | Path) -> dict:
    """Load a whole-model or encoder-only checkpoint into ``model`` (in place); see the module docstring."""
    path = Path(path)
    source = read_state_dict(path)
    target = model.state_dict()
    _, prefix = _encoder_prefix(model)
    first_conv = _first_conv(target)
    output_keys = set(getattr(model, "output_keys", lambda: [])())
    optional = set(getattr(model, "optional_keys", lambda: [])())
    matched: dict[str, torch.Tensor] = {}
    unexpected, reinitialised = [], []
    for key, name, tensor in _pairs(model, source, target, prefix):
        if name is None:
            unexpected.append(key)
            continue
        want = target[name]
        if name in output_keys and tensor.shape != want.shape and tensor.shape[1:] == want.shape[1:]:
            reinitialised.append(f"{name} {_shape(tensor)} -> {_shape(want)}")
            continue
        tensor = _fit(key, tensor, name, want, first_conv, path)
        if tensor.is_floating_point() != want.is_floating_point():
            raise EdgedaError(f"backbone weights file {path}: tensor {key!r} has dtype {tensor.dtype} but the model's {name!r} has {want.dtype}")
        matched[name] = tensor.to(dtype=want.dtype)
    required = [k for k in target if not k.endswith(_OPTIONAL_SUFFIX)]
    missing = [k for k in required if k not in matched]
    core_of = getattr(model, "encoder_only_keys", None)
    core = set(core_of()) if core_of is not None else {k for k in target if k.startswith(prefix)}
    enc_missing = [k for k in missing if k in core]
    if enc_missing:
        found = sum(1 for k in required if k in core and k in matched)
        raise EdgedaError(f"backbone weights file {path} supplies {found} of the encoder's "
                          f"{found + len(enc_missing)} tensors; missing: {_listing(enc_missing)} (is it the weights of this architecture?)")
    whole = any(not k.startswith(prefix) for k in matched) or bool(reinitialised)
    if whole:
        not_head = [k for k in missing if k not in output_keys and k not in optional]
        if not_head:
            raise EdgedaError(f"backbone weights file {path} holds more than the encoder but misses {len(not_head)} tensors "
                              f"beyond the output layer: {_listing(not_head)}")
        head = ("re-initialised: the checkpoint has another class count" if reinitialised
                else "loaded" if not missing else "partly loaded; left at its initialisation: " + _listing(missing))
    else:
        head = "at its initialisation (an encoder-only checkpoint)"
        beyond = [k for k in missing if k.startswith(prefix) and k not in core]
        if beyond:  # a detector's extra layers or pyramid
            head += f", as are the {len(beyond)} encoder tensors beyond the trunk"
    with torch.no_grad():
        model.load_state_dict(matched, strict=False)
    return {"file": path.name, "sha256": sha256_file(path), "kind": "whole model" if whole else "encoder only",
            "loaded": len(matched), "missing": missing, "unexpected": unexpected, "reinitialised": reinitialised,
            "head": head}


def options_for_weights(arch: str, options: dict | None, path: str | Path) -> dict:
    """``options`` (build settings of the detector ``arch``) completed with what the checkpoint at ``path``
    implies (SSDLite's ``reduced_tail``: false for an ImageNet MobileNetV3 trunk, whose last stage is
    full width); given settings stay, and other architectures get ``options`` unchanged."""
    from .detection import DETECTORS

    options = dict(options or {})
    if arch not in DETECTORS:
        return options
    return DETECTORS[arch].options_for_checkpoint(read_state_dict(path), options)


def describe(report: dict) -> list[str]:
    """Lines a person reads: what loaded, what was left over, what keeps its initialisation."""
    lines = [f"{report['file']} ({report['kind']}): {report['loaded']} tensors loaded, {len(report['missing'])} missing, "
             f"{len(report['unexpected'])} unused; head {report['head']}"]
    if report["reinitialised"]:
        lines.append("  re-initialised (class count differs): " + _listing(report["reinitialised"]))
    if report["missing"]:
        lines.append("  missing (kept at initialisation): " + _listing(report["missing"]))
    if report["unexpected"]:
        lines.append("  unused tensors in the file: " + _listing(report["unexpected"]))
    return lines


def pretrained_options(method_cls, options: dict) -> dict:
    """A method's options when the encoder starts from pre-trained weights: ``encoder_lr`` defaults
    to :data:`PRETRAINED_ENCODER_LR` where the method offers it (an explicit ``--option`` wins)."""
    if "encoder_lr" in getattr(method_cls, "defaults", {}) and "encoder_lr" not in options:
        return {**options, "encoder_lr": PRETRAINED_ENCODER_LR}
    return dict(options)


def load_backbone_weights(encoder: nn.Module, path: str | Path) -> dict:
    """Load the tensors of the file at ``path`` into ``encoder`` alone (in place).

    Returns ``{"loaded": n, "missing": [encoder names not in the file], "unexpected": [file names
    not used]}``. Raises :class:`~edgeda.errors.EdgedaError` on a missing or unreadable file, a shape
    mismatch, or a file that covers fewer than half of the encoder's tensors."""
    path = Path(path)
    source = read_state_dict(path)
    target = encoder.state_dict()
    first_conv = _first_conv(target)
    matched: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for key, tensor in source.items():
        name = next((f for f in _candidates(key) if f in target), None)
        if name is None or name in matched:
            unexpected.append(key)
            continue
        want = target[name]
        tensor = _fit(key, tensor, name, want, first_conv, path)
        if tensor.is_floating_point() != want.is_floating_point():
            raise EdgedaError(f"backbone weights file {path}: tensor {key!r} has dtype {tensor.dtype} but the encoder's {name!r} has {want.dtype}")
        matched[name] = tensor.to(dtype=want.dtype)
    required = [k for k in target if not k.endswith(_OPTIONAL_SUFFIX)]
    found = sum(1 for k in required if k in matched)
    if found * 2 < len(required):
        raise EdgedaError(
            f"backbone weights file {path} supplies only {found} of the encoder's {len(required)} tensors "
            f"(is it the weights of this architecture?)")
    with torch.no_grad():
        encoder.load_state_dict(matched, strict=False)
    missing = [k for k in required if k not in matched]
    return {"loaded": len(matched), "missing": missing, "unexpected": unexpected}

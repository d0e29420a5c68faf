"""Loading a user's pre-trained encoder weights from a ``.safetensors`` file (never pickle).

:func:`load_backbone_weights` matches the file's tensors to the encoder's state dict by name:

* common wrapper prefixes are stripped (``module.``, ``backbone.``, ``encoder.``, ``features.``,
  in any combination), unless the encoder itself has the name with the prefix;
* classifier tensors (``fc.*``, ``classifier.*``, ``head.*``, ``aux_classifier.*``) are ignored
  and reported as unexpected, like any other tensor the encoder has no place for;
* the encoder's first convolution takes 3-channel weights when it has 1 input channel, summed over
  the RGB axis (a grey image ``g`` fed as ``(g, g, g)`` then gives the same response);
* any other shape difference is refused with an :class:`~edgeda.errors.EdgedaError` naming the
  first mismatching tensor and both shapes, and so is a file that supplies fewer than half of
  the encoder's tensors (the wrong file, or the wrong architecture);
* BatchNorm ``num_batches_tracked`` counters are optional (older checkpoints lack them).

The result is ``{"loaded": n, "missing": [...], "unexpected": [...]}`` (encoder names / file
names) for the caller to report.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import EdgedaError

PREFIXES = ("module.", "backbone.", "encoder.", "features.")
_OPTIONAL_SUFFIX = "num_batches_tracked"


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


def _read(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not path.is_file():
        raise EdgedaError(f"backbone weights file {path} does not exist")
    try:
        return load_file(str(path))
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        first = (str(e).splitlines() or [type(e).__name__])[0][:160]
        raise EdgedaError(f"backbone weights file {path} is not a readable .safetensors file ({first})") from None


def load_backbone_weights(encoder: nn.Module, path: str | Path) -> dict:
    """Load the tensors of the ``.safetensors`` file at ``path`` into ``encoder`` (in place).

    Returns ``{"loaded": n, "missing": [encoder names not in the file], "unexpected": [file names
    not used]}``. Raises :class:`~edgeda.errors.EdgedaError` on a missing or unreadable file, a shape
    mismatch, or a file that covers fewer than half of the encoder's tensors."""
    path = Path(path)
    source = _read(path)
    target = encoder.state_dict()
    first_conv = _first_conv(target)
    matched: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for key, tensor in source.items():
        forms = _candidates(key)
        name = next((f for f in forms if f in target), None)
        if name is None or name in matched:
            unexpected.append(key)
            continue
        want = target[name]
        if tensor.shape != want.shape:
            if (name == first_conv and tensor.dim() == 4 and want.shape[1] == 1 and tensor.shape[1] == 3
                    and tensor.shape[0] == want.shape[0] and tensor.shape[2:] == want.shape[2:]):
                tensor = tensor.sum(dim=1, keepdim=True)
            else:
                raise EdgedaError(
                    f"backbone weights file {path}: tensor {key!r} has shape {_shape(tensor)} but the encoder's "
                    f"{name!r} has shape {_shape(want)} (a different architecture, width or channel count?)")
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

"""Checkpoints without pickle: nested state -> safetensors (tensors) + JSON (everything else).

Files: ``ckpt-{iter:07d}.safetensors`` then ``ckpt-{iter:07d}.json`` (which records the sha256 of
the tensor file), each written atomically (temp file, fsync, rename). A checkpoint counts only
when its JSON exists and the hash matches, so a kill at any moment leaves the previous complete
checkpoint as the latest one. The newest ``keep`` checkpoints are kept.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..utils import atomic_path, atomic_write_json, sha256_file

_NAME = re.compile(r"^ckpt-(\d{7})\.json$")
_STALE = re.compile(r"^\.ckpt-\d{7}\.(json|safetensors)\..+\.tmp$")  # left by a write that was killed


def flatten_state(obj: Any, tensors: dict[str, torch.Tensor], prefix: str = "t") -> Any:
    """Replace every tensor in a nested dict/list structure by a reference; collect tensors."""
    if isinstance(obj, torch.Tensor):
        key = f"{prefix}{len(tensors)}"
        tensors[key] = obj.detach().to("cpu").contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        return {"__dict__": [[k, flatten_state(v, tensors, prefix)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return {"__list__": [flatten_state(v, tensors, prefix) for v in obj], "tuple": isinstance(obj, tuple)}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} in a checkpoint")


def unflatten_state(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__dict__" in obj:
            return {k: unflatten_state(v, tensors) for k, v in obj["__dict__"]}
        if "__list__" in obj:
            items = [unflatten_state(v, tensors) for v in obj["__list__"]]
            return tuple(items) if obj.get("tuple") else items
    return obj


def save_checkpoint(folder: str | Path, iteration: int, state: dict, keep: int = 2) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for p in folder.iterdir():  # one writer per run folder (rank 0), so any temporary here is stale
        orphan = re.match(r"^ckpt-(\d{7})\.safetensors$", p.name)  # tensors whose JSON was never written
        if _STALE.match(p.name) or orphan and int(orphan.group(1)) < iteration and not p.with_suffix(".json").exists():
            p.unlink(missing_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    meta = flatten_state(state, tensors)
    stem = f"ckpt-{iteration:07d}"
    with atomic_path(folder / f"{stem}.safetensors") as tmp:
        save_file(tensors, str(tmp))
    digest = sha256_file(folder / f"{stem}.safetensors")
    atomic_write_json(folder / f"{stem}.json", {"iteration": iteration, "sha256": digest, "state": meta})
    for old in list_checkpoints(folder)[:-keep]:
        for suffix in (".json", ".safetensors"):
            (folder / f"ckpt-{old:07d}{suffix}").unlink(missing_ok=True)
    return folder / f"{stem}.json"


def list_checkpoints(folder: str | Path) -> list[int]:
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(int(m.group(1)) for p in folder.iterdir() if (m := _NAME.match(p.name)))


def load_checkpoint(folder: str | Path, iteration: int) -> dict:
    folder = Path(folder)
    stem = folder / f"ckpt-{iteration:07d}"
    meta = json.loads(stem.with_suffix(".json").read_text())
    tensor_file = stem.with_suffix(".safetensors")
    if sha256_file(tensor_file) != meta["sha256"]:
        raise ValueError(f"{tensor_file} does not match its recorded checksum")
    return unflatten_state(meta["state"], load_file(str(tensor_file)))


def load_latest(folder: str | Path) -> tuple[int, dict] | None:
    """The newest checkpoint that is complete and intact, or None. Damaged ones are passed over."""
    for it in reversed(list_checkpoints(folder)):
        try:
            return it, load_checkpoint(folder, it)
        except Exception:  # noqa: BLE001 - truncated, tampered or malformed: fall back to an older one
            continue
    return None

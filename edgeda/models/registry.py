"""Architectures that can be rebuilt from JSON: every deployable module is built through here.

``build(name, **kwargs)`` constructs a module and records ``{"name": ..., "kwargs": ...}`` on it,
so a bundle stores the architecture as plain JSON and :func:`rebuild` makes the same module again
without unpickling anything.
"""
from __future__ import annotations

import copy

from torch import nn

from ..registry import Registry

ARCHITECTURES: Registry = Registry("architecture")
BACKBONES: Registry = Registry("backbone")


def build(name: str, **kwargs) -> nn.Module:
    module = ARCHITECTURES.get(name)(**kwargs)
    module.edgeda_arch = {"name": name, "kwargs": copy.deepcopy(kwargs)}
    return module


def arch_of(module: nn.Module) -> dict:
    arch = getattr(module, "edgeda_arch", None)
    if arch is None:
        raise ValueError(f"{type(module).__name__} was not built through edgeda.models.build and cannot ship")
    return copy.deepcopy(arch)


def rebuild(arch: dict) -> nn.Module:
    return build(arch["name"], **arch.get("kwargs", {}))

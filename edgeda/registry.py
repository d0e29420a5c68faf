"""Name -> factory registries (methods, backbones, built-in domains, runners, plugins).

Adding an entry is one decorated definition in one new file::

    BACKBONES = Registry("backbone")

    @BACKBONES.register("dtn")
    def dtn(channels: int = 3) -> nn.Module: ...

Unknown names raise an :class:`~edgeda.errors.EdgedaError` that lists the valid ones.
"""
from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from .errors import EdgedaError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            valid = ", ".join(sorted(self._entries)) or "(none)"
            raise EdgedaError(f"unknown {self.kind} {name!r}; valid: {valid}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def items(self):
        return sorted(self._entries.items())

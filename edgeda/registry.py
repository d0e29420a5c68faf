"""Name -> factory registries (methods, backbones, built-in domains, runners, plugins).

Adding an entry is one decorated definition in one new file::

    BACKBONES = Registry("backbone")

    @BACKBONES.register("dtn")
    def dtn(channels: int = 3) -> nn.Module: ...

Unknown names raise an :class:`~edgeda.errors.EdgedaError` that lists the valid ones.
"""
from __future__ import annotations

from contextlib import contextmanager
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
            if isinstance(obj, type) and "name" not in vars(obj) and isinstance(getattr(obj, "name", None), str):
                obj.name = name  # a class that declares a ``name`` (methods, tasks) is called by its registered one
            return obj

        return add

    def unregister(self, name: str) -> T:
        """Remove an entry (a plugin unloading, a test's temporary entry); returns it."""
        if name not in self._entries:
            raise EdgedaError(f"{self.kind} {name!r} is not registered")
        return self._entries.pop(name)

    @contextmanager
    def registered(self, name: str, obj: T) -> Iterator[T]:
        """``with REG.registered(name, obj):`` -- the entry exists only inside the block."""
        self.register(name)(obj)
        try:
            yield obj
        finally:
            self.unregister(name)

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

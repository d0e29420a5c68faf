"""The method registry: ``@METHODS.register("name")`` on a :class:`~edgeda.methods.base.Method` subclass."""
from ..registry import Registry

METHODS: Registry = Registry("method")


def methods_for(task: str) -> list[str]:
    """Names of the registered methods that adapt ``task`` models."""
    return [n for n, cls in METHODS.items() if task in cls.tasks]

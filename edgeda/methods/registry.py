"""The method registry: ``@METHODS.register("name")`` on a :class:`~edgeda.methods.base.Method` subclass."""
from ..registry import Registry

METHODS: Registry = Registry("method")

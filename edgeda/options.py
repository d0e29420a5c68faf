"""Typed method options, shared by the training methods (:class:`edgeda.methods.Method`) and the
on-device adaptation methods (:class:`edgeda.adapt.base.AdaptMethod`).

A method declares ``defaults`` (name -> default value; its type is the option's type),
``choices`` (name -> allowed values, for options that name a variant) and ``option_help``
(name -> one line). Values given as text (``--option key=value``, a config file) are converted to
the default's type; a wrong name, an unconvertible value or a value outside its choices is one
:class:`~edgeda.errors.EdgedaError` naming what is valid. ``edgeda methods NAME`` prints the table.
The converted values are an :class:`Options`: read-only, read as ``opts.lr`` (or ``opts["lr"]``).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Iterator

from .errors import EdgedaError

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


def convert(default: Any, value: Any, key: str, owner: str) -> Any:
    """``value`` as the type of ``default`` (bool / int / float / str; a None default takes anything)."""
    def bad():
        return EdgedaError(f"{owner} option {key}={value!r} is not a valid {type(default).__name__}")

    if default is None or value is None:
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, float)) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        raise bad()
    if isinstance(default, int):
        if isinstance(value, bool):
            raise bad()
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                raise bad() from None
        raise bad()
    if isinstance(default, float):
        if isinstance(value, bool):
            raise bad()
        try:
            return float(value)
        except (TypeError, ValueError):
            raise bad() from None
    if isinstance(default, str):
        return value if isinstance(value, str) else str(value)
    return value


class Options(Mapping):
    """A method's converted option values, read-only: ``opts.lr`` or ``opts["lr"]``. It is a
    mapping, so ``dict(opts)`` (manifests, JSON) gives the plain values. An unknown name is an
    AttributeError (a KeyError through ``[]``) naming the valid options."""

    def __init__(self, values: Mapping, owner: str = "options"):
        shadowed = sorted(k for k in values if hasattr(Options, k))
        if shadowed:  # opts.items would be the mapping's method, not the option
            raise EdgedaError(f"{owner} option names {', '.join(shadowed)} are taken by the options object; rename them")
        object.__setattr__(self, "_values", dict(values))
        object.__setattr__(self, "_owner", owner)

    def _unknown(self, key) -> str:
        return f"{self._owner} has no option {key!r}; valid: {', '.join(sorted(self._values)) or '(none)'}"

    def __getattr__(self, key: str) -> Any:
        if key.startswith("_"):  # copy / pickle probe for dunders before the instance has its state
            raise AttributeError(key)
        try:
            return self._values[key]
        except KeyError:
            raise AttributeError(self._unknown(key)) from None

    def __getitem__(self, key: str) -> Any:
        try:
            return self._values[key]
        except KeyError:
            raise KeyError(self._unknown(key)) from None

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError(f"{self._owner} options are read-only (set {key} when building the method)")

    def __delattr__(self, key: str) -> None:
        raise AttributeError(f"{self._owner} options are read-only")

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __contains__(self, key: object) -> bool:
        return key in self._values

    def __dir__(self):
        return [*super().__dir__(), *self._values]

    def __repr__(self) -> str:
        return f"Options({self._values!r})"

    def replace(self, **changes: Any) -> "Options":
        """A copy with ``changes`` (names it already has; the values as given, not converted)."""
        unknown = set(changes) - set(self._values)
        if unknown:
            raise AttributeError(self._unknown(", ".join(sorted(unknown))))
        return Options({**self._values, **changes}, self._owner)


class Configurable:
    """What every method has, training or on-device: typed options, a one-line description, and
    the update / autocast helpers over its engine (``self.engine``, ``self.optims``)."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    defaults: ClassVar[dict] = {}
    choices: ClassVar[dict] = {}
    option_help: ClassVar[dict] = {}
    option_tasks: ClassVar[dict] = {}  # option -> the tasks it applies to (absent: every task)
    kind: ClassVar[str] = "method"

    @classmethod
    def options_for_task(cls, options: dict, task: str) -> dict:
        """``options`` without those that only apply to other tasks (an option added for detection
        changes nothing a classification run did)."""
        return {k: v for k, v in options.items() if task in cls.option_tasks.get(k, (task,))}

    @classmethod
    def resolve_options(cls, given: dict | None) -> Options:
        """The defaults updated by ``given``, each value checked and converted (once: the methods read
        them as they are)."""
        owner = f"{cls.kind} {cls.name!r}"
        unknown = set(given or {}) - set(cls.defaults)
        if unknown:
            valid = ", ".join(sorted(cls.defaults)) or "(none)"
            raise EdgedaError(f"{owner} has no option {', '.join(sorted(unknown))}; valid: {valid}")
        out = {}
        for k, default in cls.defaults.items():
            raw = (given or {}).get(k, default)
            v = convert(default, raw, k, owner)
            allowed = cls.choices.get(k)
            if allowed is not None and isinstance(raw, bool) and isinstance(default, str):
                # a config file or --option parsed on/off, yes/no as a boolean: the choice that spells it
                words = [a for a in allowed if isinstance(a, str) and a.lower() in (_TRUE if raw else _FALSE)]
                v = words[0] if len(words) == 1 else v
            if allowed is not None and v not in allowed:
                raise EdgedaError(f"{owner} option {k}={v!r}; valid: {', '.join(map(str, allowed))}")
            out[k] = v
        return Options(out, owner)

    @classmethod
    def option_specs(cls) -> list[dict]:
        """One row per option: name, type, default, choices, help (what ``edgeda methods NAME`` shows)."""
        return [{"name": k, "type": type(v).__name__ if v is not None else "any", "default": v,
                 "choices": list(cls.choices[k]) if k in cls.choices else None,
                 "help": cls.option_help.get(k, "") + (f" ({', '.join(cls.option_tasks[k])} only)" if k in cls.option_tasks else "")}
                for k, v in cls.defaults.items()]

    @classmethod
    def describe(cls) -> str:
        return cls.summary or (cls.__doc__ or "").strip().splitlines()[0]

    def update(self, loss, *optim_names: str, retain_graph: bool = False) -> None:
        """Backward ``loss`` and step the named optimizers (all of them when none is named)."""
        names = optim_names or tuple(self.optims)
        self.engine.backward_step(loss, [self.optims[n] for n in names], retain_graph=retain_graph)

    def autocast(self):
        return self.engine.autocast()

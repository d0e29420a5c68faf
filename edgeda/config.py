"""Training configuration: one dataclass, loadable from YAML/JSON; CLI flags override file values."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import EdgedaError


@dataclass
class TrainConfig:
    method: str = "dann"
    source: str = "syndigits"
    target: str | None = None  # None: ``handwritten`` for the built-in ``syndigits`` source (its pair), else no target
    target_test: str | None = None  # default: "<name>:test" for a built-in target, else none
    target_val: str | None = None  # a few labeled target images: selection (--select target_val) and a report only
    out: str = "runs/edgeda"
    task: str | None = None  # classification | segmentation | depth | detection; None: inferred from the source data
    classes: list | None = None  # train on these source classes only, by name (the others' images, pixels or boxes
    #                              left out); None: all the source's classes
    backbone: str | None = None  # None: the task's default_backbone (dtn; lraspp for dense maps; ssdlite for boxes)
    backbone_kwargs: dict = field(default_factory=dict)
    backbone_weights: str | None = None  # .safetensors/.pth/.pt/.bin, whole model or encoder, at build
    image_size: int | list | None = None  # side, or [H, W]; None: the task's (or built-in domain's) default
    channels: int = 3
    mean: list | None = None  # per-channel input normalisation; None: 0.5 (as for the built-in domains)
    std: list | None = None
    task_loss: str | None = None  # the task's supervised loss (depth: silog | l1); None: the task's default
    workers: int | None = None  # DataLoader workers for dense data; None: 0 in memory, a few for folders
    threads: int | None = None  # CPU threads for torch (None: torch's default, one per core)
    iters: int = 2000
    batch_size: int = 32  # per domain, per process
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_schedule: str = "dann"  # dann: lr0 / (1 + 10 p)^0.75 | cosine | constant
    eval_every: int = 500
    checkpoint_every: int = 500
    select: str = "last"  # model selection, never on target labels: last | a validator (checked by the trainer)
    seed: int = 0
    device: str = "auto"
    amp: bool | str = True  # True: autocast on CUDA (bf16 where supported); False: off; bf16: also on the CPU; fp16
    channels_last: bool = False  # NHWC memory format for the networks and input batches (opt-in)
    source_n: int | None = None  # images rendered for a generated source (None: the domain's default)
    val_fraction: float = 0.1  # held-out source validation for sources without a val split
    augment_shift: int = 2
    augment_contrast: float = 0.0
    augment_hflip: bool = True  # dense tasks: random horizontal flips (off for mirror-sensitive content: text, digits)
    options: dict = field(default_factory=dict)  # method-specific options
    skip_nonfinite: bool = False
    init: str | None = None  # initial weights (bundle or .safetensors) where a method needs them
    ema: float = 0.0  # decay of an exponential moving average of the shipped weights (0: off; e.g. 0.999)

    def validate(self) -> "TrainConfig":
        if self.iters < 1:
            raise EdgedaError("--iters must be at least 1")
        if self.classes is not None:
            if isinstance(self.classes, str):
                self.classes = [c.strip() for c in self.classes.split(",") if c.strip()]
            self.classes = [str(c) for c in self.classes]
            if not self.classes or len(set(self.classes)) != len(self.classes):
                raise EdgedaError(f"--classes needs distinct class names, got {','.join(self.classes) or 'none'}")
        if self.batch_size < 1:
            raise EdgedaError("--batch-size must be at least 1")
        if self.lr_schedule not in ("dann", "cosine", "constant"):
            raise EdgedaError(f"unknown lr_schedule {self.lr_schedule!r}; valid: constant, cosine, dann")
        if not 0.0 <= self.ema < 1.0:
            raise EdgedaError(f"--ema {self.ema}: the decay must be in [0, 1) (0 turns weight averaging off; e.g. 0.999)")
        amp = {"on": True, "true": True, "auto": True, "off": False, "false": False}.get(str(self.amp).lower(), self.amp)
        if amp not in (True, False, "bf16", "fp16"):
            raise EdgedaError(f"--amp {self.amp!r}: valid: on (CUDA autocast, the default), off, bf16, fp16")
        self.amp = amp
        if self.channels not in (1, 3):
            raise EdgedaError("channels must be 1 or 3")
        from .tasks.spec import known_tasks

        if self.task is not None and self.task not in known_tasks():
            raise EdgedaError(f"unknown --task {self.task!r}; valid: {', '.join(known_tasks())}")
        if self.image_size is not None:
            size = [self.image_size] * 2 if isinstance(self.image_size, int) else list(self.image_size)
            if len(size) != 2 or not all(isinstance(v, int) and v >= 8 for v in size):
                raise EdgedaError(f"--image-size {self.image_size!r}: give a side or H,W of at least 8 pixels")
        for name in ("mean", "std"):
            v = getattr(self, name)
            if v is not None and len(v) != self.channels:
                raise EdgedaError(f"--{name} needs {self.channels} values (one per channel), got {v!r}")
        if self.std is not None and min(self.std) <= 0:
            raise EdgedaError("--std values must be positive")
        if self.workers is not None and self.workers < 0:
            raise EdgedaError("--workers must be 0 or more")
        if self.threads is not None and self.threads < 1:
            raise EdgedaError("--threads must be at least 1")
        self.eval_every = max(1, min(self.eval_every, self.iters))
        self.checkpoint_every = max(1, self.checkpoint_every)
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def load_config_file(path: str | Path) -> dict:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise EdgedaError(f"cannot read config file {path}: {e.strerror}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise EdgedaError(f"config file {path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise EdgedaError(f"config file {path} must hold a mapping of option names to values")
    return data


def make_config(file_values: dict | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults < file values < overrides (CLI flags that were given; None means 'not given')."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    merged: dict[str, Any] = {}
    for source in (file_values or {}, {k: v for k, v in (overrides or {}).items() if v is not None}):
        unknown = set(source) - names
        if unknown:
            raise EdgedaError(f"unknown config option(s) {', '.join(sorted(unknown))}; valid: {', '.join(sorted(names))}")
        for k, v in source.items():
            if k == "options" and isinstance(v, dict):
                merged.setdefault("options", {}).update(v)
            else:
                merged[k] = v
    try:
        return TrainConfig(**merged).validate()
    except TypeError as e:
        raise EdgedaError(f"invalid configuration: {e}") from None


#: Settings that ``--resume`` may change: they extend or watch a run without changing what it
#: learns from (``iters`` extends the budget; the LR schedule then spans the new length).
RESUME_SAFE = ("iters", "eval_every", "checkpoint_every", "device", "workers", "threads", "skip_nonfinite", "out")


def resume_config(out: str | Path, given: dict[str, Any]) -> TrainConfig:
    """The configuration of the run stored in ``out`` (its ``config.json``), with the settings in
    ``given`` (flags or file values the user set; None: not given) applied where ``--resume`` may
    change them (:data:`RESUME_SAFE`). A given setting outside those that differs from the run's
    is one clear error: the run continues with its own settings or not at all."""
    path = Path(out) / "config.json"
    if not path.is_file():
        raise EdgedaError(f"--resume: {out} holds no run to continue (no config.json); start the run without --resume")
    try:
        saved = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise EdgedaError(f"--resume: cannot read the run's settings {path} ({e})") from None
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(k for k, v in given.items() if v is not None) - names
    if unknown:
        raise EdgedaError(f"unknown config option(s) {', '.join(sorted(unknown))}; valid: {', '.join(sorted(names))}")
    saved = {k: v for k, v in saved.items() if k in names}
    changed = []
    for k, v in given.items():
        if v is None or k in RESUME_SAFE:
            continue
        old = saved.get(k)
        if isinstance(v, dict) and isinstance(old, dict):  # options: the given keys must keep their values
            diff = {ok: ov for ok, ov in v.items() if old.get(ok) != ov}
            if diff:
                changed.append(f"{k} {diff!r} (run: {({ok: old.get(ok) for ok in diff})!r})")
        elif _plain(v) != _plain(old):
            changed.append(f"{k}={v!r} (run: {old!r})")
    if changed:
        raise EdgedaError(f"--resume continues the run in {out} with its own settings; these differ from it: "
                          f"{'; '.join(changed)}. Only {', '.join('--' + n.replace('_', '-') for n in RESUME_SAFE if n != 'out')} "
                          "may change on --resume (or start a new run in another --out)")
    merged = {**saved, **{k: v for k, v in given.items() if v is not None and k in RESUME_SAFE}, "out": str(out)}
    try:
        return TrainConfig(**merged).validate()
    except TypeError as e:
        raise EdgedaError(f"--resume: the run's settings in {path} are not valid: {e}") from None


def _plain(v):
    """Tuples and lists compare alike (JSON has lists only)."""
    return [_plain(x) for x in v] if isinstance(v, (list, tuple)) else v


def parse_option(text: str) -> tuple[str, Any]:
    """``key=value`` with the value parsed as YAML (numbers, booleans, lists)."""
    if "=" not in text:
        raise EdgedaError(f"--option expects key=value, got {text!r}")
    k, v = text.split("=", 1)
    return k.strip(), yaml.safe_load(v)

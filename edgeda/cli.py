"""The ``edgeda`` command line: a thin click layer over the library.

Errors the user can act on print one sentence and exit with code 2; ``--json`` prints a
machine-readable result on stdout.
"""
from __future__ import annotations

import functools
import json
import sys

import click

from .errors import EdgedaError


def handle_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except EdgedaError as e:
            click.secho(f"error: {e}", fg="red", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            click.secho("interrupted; the last checkpoint is kept (continue with --resume)", fg="yellow", err=True)
            sys.exit(130)

    return wrapper


def emit_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


# Commands that live with their subsystem, imported only when used (keeps `edgeda --help` fast
# and lets each subsystem own its command): name -> "module:attribute".
LAZY_COMMANDS = {
    "export": "edgeda.export.cli:export",
    "predict": "edgeda.export.cli:predict",
    "bench": "edgeda.bench.cli:bench",
    "adapt": "edgeda.adapt.cli:adapt",
    "weights": "edgeda.models.weights_cli:weights",
}


class LazyGroup(click.Group):
    @staticmethod
    def _load(name):
        import importlib

        mod, attr = LAZY_COMMANDS[name].split(":")
        try:
            return getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError):
            return None  # that subsystem is not part of this installation

    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | {n for n in LAZY_COMMANDS if self._load(n) is not None})

    def get_command(self, ctx, name):
        cmd = super().get_command(ctx, name)
        if cmd is None and name in LAZY_COMMANDS:
            cmd = self._load(name)
        return cmd


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edgeda")
def main() -> None:
    """edgeda: synthetic-to-real domain adaptation that ships to the edge."""


def _parse_size(text):
    if text is None:
        return None
    try:
        parts = [int(p) for p in str(text).replace("x", ",").split(",")]
    except ValueError:
        raise EdgedaError(f"--image-size expects a side or H,W, got {text!r}") from None
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        return parts
    raise EdgedaError(f"--image-size expects a side or H,W, got {text!r}")


class _SelectOption(click.Option):
    """``--select``: its help lists every registered validator, read when help is shown (the
    registry imports torch, which plain commands should not pay for)."""

    def get_help_record(self, ctx):
        from .training.selection import selector_names

        record = super().get_help_record(ctx)
        return record and (record[0], record[1].replace("{choices}", " | ".join(selector_names())))


class _TaskOption(click.Option):
    """``--task``: any registered task, listed when help is shown and checked when the command runs
    (the registry imports torch, which plain commands should not pay for)."""

    def get_help_record(self, ctx):
        from .task import known_tasks

        record = super().get_help_record(ctx)
        return record and (record[0], record[1].replace("{choices}", " | ".join(known_tasks())))


def _check_task(task):
    from .task import known_tasks

    if task is not None and task not in known_tasks():
        raise EdgedaError(f"unknown --task {task!r}; valid: {', '.join(known_tasks())}")
    return task


@main.command()
@click.option("--method", help="adaptation method (see `edgeda methods`), or auto: train several, ship the best by a validator")
@click.option("--task", cls=_TaskOption, help="what the model predicts: {choices} (default: inferred from the source data)")
@click.option("--source", help="labeled source domain: built-in name, folder or .npz")
@click.option("--target", help="unlabeled target domain: built-in name, folder or .npz")
@click.option("--target-test", help="labeled target test domain, for reporting only")
@click.option("--target-val", help="a few labeled target images (5-20 per class): --select target_val and a report with a 95% interval")
@click.option("--iters", type=int, help="training iterations")
@click.option("--batch-size", type=int, help="images per domain per step")
@click.option("--lr", type=float, help="base learning rate")
@click.option("--backbone", help="network: dtn, resnet_small, resnet18/34/50 (classification); unet, deeplab, lraspp (dense)")
@click.option("--backbone-weights", type=click.Path(dir_okay=False), help="pre-trained weights, whole model or encoder (.safetensors, or .pth/.pt/.bin read with weights_only; torchvision / Hugging Face names)")
@click.option("--backbone-option", "backbone_options", multiple=True,
              help="network setting key=value (repeatable), e.g. width=0.5, encoder=resnet18")
@click.option("--image-size", help="model input size: a side (32) or H,W (128,256); default: the data's")
@click.option("--task-loss", help="the task's supervised loss (depth: silog | l1)")
@click.option("--workers", type=int, help="DataLoader workers for dense data read from disk")
@click.option("--eval-every", type=int, help="evaluate and log every N iterations")
@click.option("--select", cls=_SelectOption,
              help="model selection without target labels (see `edgeda methods --validators`): {choices}")
@click.option("--seed", type=int)
@click.option("--device", help="auto | cpu | cuda[:N]")
@click.option("--init", help="initial weights of the task network (a bundle, e.g. a source-only one, or .safetensors)")
@click.option("--option", "options", multiple=True, help="method option key=value (repeatable)")
@click.option("--ema", type=float, help="ship an exponential moving average of the weights with this decay (e.g. 0.999; 0: off)")
@click.option("--amp", type=click.Choice(["on", "off", "bf16", "fp16"]),
              help="mixed precision: on = CUDA autocast, bf16 where supported (default); bf16 also autocasts on the CPU")
@click.option("--channels-last", is_flag=True, default=None, help="NHWC memory format for networks and batches")
@click.option("--skip-nonfinite", is_flag=True, default=None, help="skip steps whose loss or gradients are NaN/inf instead of stopping")
@click.option("--out", help="run folder (checkpoints, metrics.jsonl, model.edgeda)")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML/JSON config; flags override it")
@click.option("--resume", is_flag=True, help="continue from the last checkpoint in --out")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
@handle_errors
def train(method, task, source, target, target_test, target_val, iters, batch_size, lr, backbone, backbone_weights, backbone_options, image_size,
          task_loss, workers, eval_every, select, seed, device, init, options, ema, amp, channels_last, skip_nonfinite, out,
          config_file, resume, as_json) -> None:
    """Train a model with an adaptation method and write a bundle."""
    from .config import load_config_file, make_config, parse_option
    from .training import train as run_train

    file_values = load_config_file(config_file) if config_file else {}
    overrides = dict(method=method, task=task, source=source, target=target, target_test=target_test, iters=iters,
                     target_val=target_val,
                     backbone_weights=backbone_weights, image_size=_parse_size(image_size), task_loss=task_loss,
                     workers=workers,
                     batch_size=batch_size, lr=lr, backbone=backbone, eval_every=eval_every, select=select, seed=seed,
                     device=device, init=init, out=out, skip_nonfinite=skip_nonfinite, ema=ema, amp=amp,
                     channels_last=channels_last)
    if options:
        overrides["options"] = dict(parse_option(o) for o in options)
    if backbone_options:
        overrides["backbone_kwargs"] = {**file_values.get("backbone_kwargs", {}),
                                        **dict(parse_option(o) for o in backbone_options)}
    if method == "auto":  # source-only and a short list of methods; ship what the validator ranks best
        from .training.auto import train_auto

        overrides["method"] = "source_only"
        auto = train_auto(make_config(file_values, overrides), log=None if as_json else click.echo)
        if as_json:
            emit_json(auto)
            return
        for name, c in auto["candidates"].items():
            test = f", target test {c['target_test']:.1%} (reported only)" if c.get("target_test") is not None else ""
            click.echo(f"  {name:<18} {auto['selector']} {c['scores'].get(auto['selector'], float('nan')):.4f}{test}")
        click.echo(f"chosen by {auto['selector']}: {auto['chosen']}")
        if auto["transfer_warning"]:
            click.echo(auto["transfer_warning"])
        click.echo(f"bundle: {auto['bundle']}")
        return
    cfg = make_config(file_values, overrides)
    result = run_train(cfg, resume=resume, progress=not as_json and sys.stderr.isatty(), log=None if as_json else click.echo)
    if result.bundle is None:  # a torchrun rank other than 0: rank 0 reports
        return
    out = {"bundle": str(result.bundle), "run_dir": str(result.run_dir), "metrics": result.metrics,
           "wall_time_s": round(result.wall_time, 2), "skipped_steps": result.skipped_steps}
    if as_json:
        emit_json(out)
        return
    from .tasks import task_of

    m = result.metrics
    t = task_of(result.task)
    key, name = next(iter(t.record_keys.items()))
    fmt = (lambda v: f"{v:.1%}") if t.higher_is_better else (lambda v: f"{v:.3f}")
    click.echo(f"\n{cfg.method} ({result.task}): {cfg.source} -> {cfg.target}, {cfg.iters} iterations in {result.wall_time:.0f}s")
    click.echo(f"  source val {name}  {fmt(m.get(f'source_val_{key}', float('nan')))}")
    if f"target_test_{key}" in m:
        click.echo(f"  target test {name} {fmt(m[f'target_test_{key}'])} (reported only; selection used {cfg.select})")
    if "target_val_interval" in m:
        iv = m["target_val_interval"]
        click.echo(f"  target val accuracy {iv['accuracy']:.1%} (95% bootstrap interval {iv['low']:.1%}-{iv['high']:.1%}, n={iv['n']})")
    if m.get("transfer_warning"):
        click.echo(m["transfer_warning"])
    click.echo(f"bundle: {result.bundle}")


@main.command("eval")
@click.argument("bundle", type=click.Path())
@click.option("--data", help="labeled domain spec (default: the bundle's target test split)")
@click.option("--confusion", "confusion_png", type=click.Path(dir_okay=False), help="write the confusion matrix PNG here")
@click.option("--samples", "samples_png", type=click.Path(dir_okay=False),
              help="dense bundles: write image | truth | prediction | error panels here")
@click.option("--device", default="auto")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def eval_cmd(bundle, data, confusion_png, samples_png, device, as_json) -> None:
    """The task's scores of a bundle on a labeled domain: accuracy / mIoU and per-class IoU /
    depth errors, with a confusion matrix PNG (and sample panels for dense tasks)."""
    from pathlib import Path

    from .evaluation import evaluate_bundle

    stem = str(Path(bundle).with_suffix(""))
    confusion_png = confusion_png or stem + "-confusion.png"
    samples_png = samples_png or stem + "-samples.png"
    m = evaluate_bundle(bundle, data, confusion_png=confusion_png, samples_png=samples_png, device=device)
    if as_json:
        emit_json(m)
        return
    from .tasks import task_of

    lines = task_of(m["task"]).eval_lines(m)
    click.echo(f"{m['bundle']} on {m['data']}: {lines[0]}")
    for line in lines[1:]:
        click.echo(f"  {line}")
    if m["load_report"]["skipped"]:
        click.echo(f"  skipped {m['load_report']['skipped']} unreadable files")
    if m.get("confusion_png"):
        click.echo(f"confusion matrix: {m['confusion_png']}")
    if m.get("eval_samples_png"):
        click.echo(f"samples (image | truth | prediction | error): {m['eval_samples_png']}")
    if m.get("samples_png"):
        click.echo(f"sample grid (last training evaluation): {m['samples_png']}")


@main.command()
@click.argument("name", required=False)
@click.option("--task", cls=_TaskOption, help="only methods for this task: {choices}")
@click.option("--validators", is_flag=True, help="list the label-free validators for --select instead")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def methods(name, task, validators, as_json) -> None:
    """List the registered adaptation methods and the tasks each adapts; with NAME, that method's
    options (type, default, choices)."""
    _check_task(task)
    if validators:
        from .training.validators import VALIDATORS, describe

        rows = {n: describe(n) for n in VALIDATORS}
        rows = {"last": "the last checkpoint", **rows}
        if as_json:
            emit_json(rows)
            return
        width = max(map(len, rows))
        for n, doc in rows.items():
            click.echo(f"{n.ljust(width)}  {doc}")
        return
    from .adapt import ADAPT_METHODS
    from .methods import METHODS

    if name is not None:  # one method, training or on-device: its options
        if name not in METHODS and name not in ADAPT_METHODS:
            raise EdgedaError(f"unknown method {name!r}; training methods: {', '.join(METHODS)}; "
                              f"on-device methods: {', '.join(ADAPT_METHODS)}")
        reg = METHODS if name in METHODS else ADAPT_METHODS
        cls = reg.get(name)
        specs = cls.option_specs()
        if as_json:
            emit_json({"name": name, "summary": cls.describe(), "tasks": list(cls.tasks), "options": specs})
            return
        where = "edgeda train --method" if reg is METHODS else "edgeda adapt --method"
        click.echo(f"{name} ({where} {name}; tasks: {', '.join(cls.tasks)}): {cls.describe()}")
        for s in specs:
            choices = f" [{' | '.join(map(str, s['choices']))}]" if s["choices"] else ""
            click.echo(f"  {s['name']} = {s['default']!r} ({s['type']}){choices}" + (f"  {s['help']}" if s["help"] else ""))
        return
    rows = {name: {"summary": cls.describe(), "tasks": list(cls.tasks), "uses_target": cls.uses_target,
                   "options": cls.defaults}
            for name, cls in METHODS.items() if task is None or task in cls.tasks}
    if as_json:
        emit_json(rows)
        return
    width = max((len(n) for n in rows), default=4)
    for name, r in rows.items():
        click.echo(f"{name.ljust(width)}  [{', '.join(r['tasks'])}]  {r['summary']}")
    click.echo("options of one method: edgeda methods NAME")


@main.group()
def data() -> None:
    """Look at domains."""


@data.command()
@click.argument("spec")
@click.option("--out", default="preview.png", type=click.Path(dir_okay=False), show_default=True)
@click.option("--n", default=64, show_default=True, help="images in the grid")
@click.option("--size", default=32, show_default=True)
@click.option("--channels", default=3, show_default=True)
@handle_errors
def preview(spec, out, n, size, channels) -> None:
    """Write a labelled grid of images from a domain SPEC (dense data: image | mask overlay | depth rows)."""
    from .data import load_domain
    from .data.preview import preview_dense, preview_grid
    from .data.spec import default_size, is_dense_spec

    if is_dense_spec(spec):  # built-in dense domains render at their own size; user data is shown as stored
        dom = load_domain(spec, labeled=True, size=default_size(spec) or (size, size), channels=channels)
        dom.require_usable(task=None)
        path = preview_dense(dom, out, min(n, 16))
        classes = f", classes: {', '.join(dom.classes)}" if dom.classes else ""
        click.echo(f"{dom.name}: {dom.report.summary()}{classes}; preview written to {path}")
        for p, reason in dom.report.skipped[:10]:
            click.echo(f"  skipped {p}: {reason}")
        return

    labeled = True
    try:
        dom = load_domain(spec, labeled=True, size=(size, size), channels=channels, n=max(n, 10) if "syndigits" in spec else None)
    except EdgedaError:
        labeled = False
        dom = load_domain(spec, labeled=False, size=(size, size), channels=channels)
    dom.require_usable(labeled=False)
    path = preview_grid(dom, out, n)
    click.echo(f"{dom.name}: {dom.report.summary()}{'' if labeled else ' (unlabeled)'}; grid written to {path}")
    for p, reason in dom.report.skipped[:10]:
        click.echo(f"  skipped {p}: {reason}")


if __name__ == "__main__":
    main()

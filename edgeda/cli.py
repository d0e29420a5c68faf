"""The ``edgeda`` command line: a thin click layer over the library.

Errors the user can act on print one sentence and exit with code 2; ``--json`` prints a
machine-readable result on stdout.
"""
from __future__ import annotations

import sys

import click

from .config import TrainConfig, load_config_file, make_config, parse_option, resume_config
from .console import emit_json, handle_errors, print_skipped
from .errors import EdgedaError


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


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
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
        from .tasks.spec import known_tasks

        record = super().get_help_record(ctx)
        return record and (record[0], record[1].replace("{choices}", " | ".join(known_tasks())))


def _check_task(task):
    from .tasks.spec import known_tasks

    if task is not None and task not in known_tasks():
        raise EdgedaError(f"unknown --task {task!r}; valid: {', '.join(known_tasks())}")
    return task


def _default(name: str):
    """The TrainConfig default of ``name``, shown by ``--help``. A flag left at its default counts as
    not given (see :func:`_given`), so a config file's value or a resumed run's stands."""
    return getattr(TrainConfig, name)


def _given(ctx: click.Context, values: dict) -> dict:
    """``values`` with those the user did not type on the command line set to None."""
    from click.core import ParameterSource

    return {k: (v if ctx.get_parameter_source(k) not in (None, ParameterSource.DEFAULT) else None)
            for k, v in values.items()}


@main.command()
@click.option("--method", default=_default("method"), show_default=True,
              help="adaptation method (see `edgeda methods`), or auto: train several, ship the best by a validator")
@click.option("--task", cls=_TaskOption, show_default="inferred from the source data",
              help="what the model predicts: {choices}")
@click.option("--source", default=_default("source"), show_default=True, help="labeled source domain: built-in name, folder or .npz")
@click.option("--target", show_default="handwritten when the source is syndigits, else none",
              help="unlabeled target domain: built-in name, folder or .npz (needed by methods that adapt to it)")
@click.option("--classes", show_default="all the source's",
              help="train on these source classes only: comma-separated names (the others' images, pixels or boxes "
                   "are left out; test data is scored on these)")
@click.option("--target-test", show_default="the target's test split where it is built in, else none",
              help="labeled target test domain, for reporting only")
@click.option("--target-val", show_default="none",
              help="a few labeled target images (5-20 per class): --select target_val and a report with a 95% interval")
@click.option("--iters", type=int, default=_default("iters"), show_default=True, help="training iterations")
@click.option("--batch-size", type=int, default=_default("batch_size"), show_default=True, help="images per domain per step")
@click.option("--lr", type=float, default=_default("lr"), show_default=True, help="base learning rate")
@click.option("--backbone", show_default="dtn for classification, lraspp for segmentation and depth",
              help="network: dtn, resnet_small, resnet18/34/50 (classification); unet, deeplab, lraspp (dense)")
@click.option("--backbone-weights", type=click.Path(dir_okay=False), show_default="none", help="pre-trained weights, whole model or encoder (.safetensors, or .pth/.pt/.bin read with weights_only; torchvision / Hugging Face names)")
@click.option("--backbone-option", "backbone_options", multiple=True,
              help="network setting key=value (repeatable), e.g. width=0.5, encoder=resnet18")
@click.option("--image-size", show_default="a built-in domain's own size (syndigits 32, digitscenes 64, synscenes 128,256); "
              "for folders and .npz files 32 (classification) or 128 (segmentation, depth)",
              help="model input size: a side (32) or H,W (128,256); images are resized to it")
@click.option("--task-loss", show_default="silog for depth", help="the task's supervised loss (depth: silog | l1)")
@click.option("--workers", type=int, show_default="0 for data in memory, a few for folders",
              help="DataLoader workers for dense data read from disk")
@click.option("--threads", type=int, show_default="one per core", help="CPU threads for torch (1 on a machine other jobs share)")
@click.option("--eval-every", type=int, default=_default("eval_every"), show_default=True, help="evaluate and log every N iterations")
@click.option("--checkpoint-every", type=int, default=_default("checkpoint_every"), show_default=True,
              help="write a checkpoint every N iterations (and at the end), for --resume")
@click.option("--select", cls=_SelectOption, default=_default("select"), show_default=True,
              help="which evaluated iteration to ship (see `edgeda methods --validators`): {choices}; all but "
                   "target_val are label-free, target_val scores the --target-val images")
@click.option("--seed", type=int, default=_default("seed"), show_default=True)
@click.option("--device", default=_default("device"), show_default=True, help="auto | cpu | cuda[:N]")
@click.option("--init", show_default="none",
              help="initial weights of the task network (a bundle, e.g. a source-only one, or .safetensors)")
@click.option("--option", "options", multiple=True, help="method option key=value (repeatable; see `edgeda methods NAME`)")
@click.option("--ema", type=float, show_default="0 (off)",
              help="ship an exponential moving average of the weights with this decay (e.g. 0.999; 0: off)")
@click.option("--amp", type=click.Choice(["on", "off", "bf16", "fp16"]), show_default="on",
              help="mixed precision: on = CUDA autocast, bf16 where supported; bf16 also autocasts on the CPU")
@click.option("--channels-last", is_flag=True, default=None, show_default="off", help="NHWC memory format for networks and batches")
@click.option("--skip-nonfinite", is_flag=True, default=None, show_default="off",
              help="skip steps whose loss or gradients are NaN/inf instead of stopping")
@click.option("--out", default=_default("out"), show_default=True, help="run folder (checkpoints, config.json, metrics.jsonl, model.edgeda)")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML/JSON config; flags override it")
@click.option("--resume", is_flag=True,
              help="continue the run in --out with its own settings (its config.json) from its last intact checkpoint; "
                   "only --iters, --eval-every, --checkpoint-every, --device, --workers, --threads and --skip-nonfinite may change")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
@handle_errors
def train(options, backbone_options, config_file, resume, as_json, **settings) -> None:
    """Train a model with an adaptation method and write a bundle."""
    file_values = load_config_file(config_file) if config_file else {}
    settings["image_size"] = _parse_size(settings["image_size"])
    overrides = _given(click.get_current_context(), settings)
    if options:
        overrides["options"] = dict(parse_option(o) for o in options)
    if backbone_options:
        overrides["backbone_kwargs"] = {**file_values.get("backbone_kwargs", {}),
                                        **dict(parse_option(o) for o in backbone_options)}
    if (overrides["method"] or file_values.get("method")) == "auto":  # source-only and a short list of methods; ship what the validator ranks best
        _train_auto(make_config(file_values, {**overrides, "method": "source_only"}), as_json)
    else:
        _train_one(file_values, overrides, resume, as_json)


def _train_auto(cfg, as_json: bool) -> None:
    from .auto import train_auto

    auto = train_auto(cfg, log=None if as_json else click.echo)
    if as_json:
        emit_json(auto)
    else:
        _print_auto(auto)


def _train_one(file_values: dict, overrides: dict, resume: bool, as_json: bool) -> None:
    from .training import train as run_train

    if resume:  # the run stored in --out continues with its own settings; only safe ones may change
        given = {**file_values, **{k: v for k, v in overrides.items() if v is not None}}
        if not given.get("out"):
            raise EdgedaError("--resume needs --out DIR, the folder of the run to continue")
        cfg = resume_config(given["out"], given)
    else:
        cfg = make_config(file_values, overrides)
    result = run_train(cfg, resume=resume, progress=not as_json and sys.stderr.isatty(), log=None if as_json else click.echo)
    if result.bundle is None:  # a torchrun rank other than 0: rank 0 reports
        return
    if as_json:
        emit_json({"bundle": str(result.bundle), "run_dir": str(result.run_dir), "metrics": result.metrics,
                   "wall_time_s": round(result.wall_time, 2), "skipped_steps": result.skipped_steps})
    else:
        _print_run(cfg, result)


def _score_format(task: str):
    """How a task's headline score prints: a percentage where higher is better, else the error itself."""
    from .tasks import task_of

    return (lambda v: f"{v:.1%}") if task_of(task).higher_is_better else (lambda v: f"{v:.3f}")


def _print_auto(auto: dict) -> None:
    """``edgeda train --method auto``'s candidates, their scores, the pick and the warning."""
    fmt = _score_format(auto["task"])
    for name, c in auto["candidates"].items():
        test = f", target test {fmt(c['target_test'])} (reported only)" if c.get("target_test") is not None else ""
        click.echo(f"  {name:<18} {auto['selector']} {c['scores'].get(auto['selector'], float('nan')):.4f}{test}")
    click.echo(f"chosen by {auto['selector']}: {auto['chosen']}")
    if auto["transfer_warning"]:
        click.echo(auto["transfer_warning"])
    click.echo(f"bundle: {auto['bundle']}")


def _print_run(cfg, result) -> None:
    """A finished training run: its source-validation and (reported only) target-test headline scores."""
    from .tasks import task_of

    m = result.metrics
    key, name = next(iter(task_of(result.task).record_keys.items()))
    fmt = _score_format(result.task)
    click.echo(f"\n{cfg.method} ({result.task}): {cfg.source} -> {cfg.target or '(no target)'}, {cfg.iters} iterations in "
               f"{result.wall_time:.0f}s")
    click.echo(f"  source val {name}  {fmt(m.get(f'source_val_{key}', float('nan')))}")
    if f"target_test_{key}" in m:
        click.echo(f"  target test {name} {fmt(m[f'target_test_{key}'])} (reported only; selection used {cfg.select})")
    if "target_val_interval" in m:
        iv = m["target_val_interval"]
        click.echo(f"  target val accuracy {iv['accuracy']:.1%} (95% bootstrap interval {iv['low']:.1%}-{iv['high']:.1%}, n={iv['n']})")
    elif f"target_val_{key}" in m:  # dense and detection: the few labelled target images' score
        click.echo(f"  target val {name}  {fmt(m[f'target_val_{key}'])} (the --target-val images; selection used {cfg.select})")
    if m.get("transfer_warning"):
        click.echo(m["transfer_warning"])
    click.echo(f"bundle: {result.bundle}")


@main.command("eval")
@click.argument("bundle", type=click.Path())
@click.option("--data", show_default="the bundle's target test split", help="labeled domain spec")
@click.option("--confusion", "confusion_png", type=click.Path(dir_okay=False), help="write the confusion matrix PNG here")
@click.option("--samples", "samples_png", type=click.Path(dir_okay=False),
              help="dense and detection bundles: write sample panels (image | truth | prediction ...) here")
@click.option("--device", default="auto", help="where the model runs: auto (CUDA where available, else CPU) | cpu | cuda[:N]")
@click.option("--json", "as_json", is_flag=True, help="print the scores as JSON")
@handle_errors
def eval_cmd(bundle, data, confusion_png, samples_png, device, as_json) -> None:
    """The task's scores of a bundle on a labeled domain: accuracy / mIoU and per-class IoU /
    depth errors, with a confusion matrix PNG (and sample panels for dense tasks)."""
    from pathlib import Path

    from .bundle_eval import evaluate_bundle

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
    print_skipped(m["load_report"], click.echo)
    if m.get("confusion_png"):
        click.echo(f"confusion matrix: {m['confusion_png']}")
    if m.get("eval_samples_png"):
        click.echo(f"samples ({' | '.join(task_of(m['task']).panel_headers(True))}): {m['eval_samples_png']}")
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
        import textwrap

        from .training.validators import describe, selector_names

        rows = {n: describe(n, full=True) for n in selector_names()}
        if as_json:
            emit_json(rows)
            return
        click.echo("--select choices (all label-free except target_val):")
        for n, doc in rows.items():
            click.echo(f"\n{n}\n" + textwrap.fill(doc, width=100, initial_indent="  ", subsequent_indent="  "))
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
                   "options": cls.defaults, "command": "train"}
            for name, cls in METHODS.items() if task is None or task in cls.tasks}
    on_device = {name: {"summary": cls.describe(), "tasks": list(cls.tasks), "uses_target": True,
                        "options": cls.defaults, "command": "adapt"}
                 for name, cls in ADAPT_METHODS.items() if task is None or task in cls.tasks}
    if as_json:
        emit_json({**rows, **{n: r for n, r in on_device.items() if n not in rows}})
        return
    width = max((len(n) for n in [*rows, *on_device]), default=4)
    click.echo("training (edgeda train --method NAME):")
    for name, r in rows.items():
        click.echo(f"  {name.ljust(width)}  [{', '.join(r['tasks'])}]  {r['summary']}")
    if on_device:
        click.echo("on the device, source-free (edgeda adapt --method NAME; default: shot for classifiers, tent for segmentation and detection):")
        for name, r in on_device.items():
            click.echo(f"  {name.ljust(width)}  [{', '.join(r['tasks'])}]  {r['summary']}")
    click.echo("options of one method: edgeda methods NAME; model selection: edgeda methods --validators")


@main.group()
def data() -> None:
    """Look at domains."""


@data.command()
@click.argument("spec")
@click.option("--out", default="preview.png", type=click.Path(dir_okay=False), show_default=True)
@click.option("--n", default=64, show_default=True, help="images in the grid")
@click.option("--size", default=32, show_default=True,
              help="side in pixels images are resized to (classification data; built-in dense domains use their own size)")
@click.option("--channels", default=3, show_default=True, type=click.IntRange(1, 3), help="1 (grey) or 3 (RGB)")
@click.option("--task", cls=_TaskOption, show_default="detection for a COCO .json or a YOLO, VOC or KITTI folder, else by the data",
              help="draw the data as this task reads it: {choices}")
@handle_errors
def preview(spec, out, n, size, channels, task) -> None:
    """Write a labelled grid of images from a domain SPEC (dense data: image | mask overlay | depth rows;
    detection data: the boxes with their class names)."""
    from .tasks.preview import preview_spec

    _check_task(task)
    dom, path, what = preview_spec(spec, out, n=n, size=size, channels=channels, task=task)
    click.echo(f"{dom.name}: {dom.report.summary()}{what}; preview written to {path}")
    print_skipped(dom.report.to_dict(), click.echo, listed=10)


if __name__ == "__main__":
    main()

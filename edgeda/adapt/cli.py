"""``edgeda adapt``: source-free adaptation of a shipped bundle to a folder of target images."""
from __future__ import annotations

import sys

import click

from ..config import parse_option
from ..console import emit_json, handle_errors
from . import adapt as run_adapt
from .tasks import adaptation_of


@click.command()
@click.argument("bundle", type=click.Path())
@click.option("--target-dir", required=True, type=click.Path(),
              help="folder of this device's unlabeled images (or an .npz); read at the bundle's input size")
@click.option("--out", required=True, type=click.Path(), help="where to write the adapted bundle (a new path)")
@click.option("--method", help="shot | tent | cotta | 3cgan (each adapts classification and segmentation bundles, tent "
              "and cotta detection bundles; tent is the cheapest, 3cgan the most expensive; see `edgeda methods`)  "
              "[default: shot for classifiers, tent for segmentation and detection]")
@click.option("--iters", type=int, show_default="the method's own", help="iterations; 0 = until the --minutes budget ends")
@click.option("--minutes", type=float,
              help="wall-clock ceiling for the whole run, set-up and writing included; it stops the method's "
                   "iterations early but never adds any (use --iters 0 to run until it ends)")
@click.option("--memory-mb", type=float,
              help="peak memory budget; picks the batch size (and precision on CUDA; for dense frames also the "
                   "training crop, evaluation stays on full frames)")
@click.option("--batch", type=int, show_default="64, 8 for dense frames", help="target images per step (upper bound under --memory-mb)")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda[:N]")
@click.option("--export", "do_export", is_flag=True, help="re-export ONNX (and TensorRT where installed) into the new bundle")
@click.option("--labels", help="labeled domain spec used only to report accuracy (mIoU for segmentation, mAP for "
                                    "detection) before and after")
@click.option("--option", "options", multiple=True, help="method option key=value (repeatable)")
@click.option("--select", default="info_max", show_default=True, type=click.Choice(["info_max", "last"]),
              help="which healthy state to write: highest information maximisation on the target images (for "
                   "segmentation its diversity term is measured against the shipped model's class marginal; "
                   "for detection the mean best anchor score minus the drift of the score distribution), "
                   "or the last; the shipped state is always a candidate")
@click.option("--seed", default=0, show_default=True)
@click.option("--threads", type=int, show_default="one per core", help="CPU threads for torch")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
@handle_errors
def adapt(bundle, target_dir, out, method, iters, minutes, memory_mb, batch, device, do_export, labels, options,
          select, seed, threads, as_json) -> None:
    """Adapt BUNDLE to unlabeled target images without any source data; write a new bundle.

    The input bundle is never modified. If the run collapses (NaN, all predictions or pixels in one
    class, classes vanishing, exploding entropy) the last healthy state is written and the exit
    code is 3. Segmentation bundles are monitored and selected per pixel; detection bundles by their
    detections per image (vanishing, exploding, one class) and score distribution; depth bundles
    are refused.
    """
    import time

    started = time.perf_counter()

    opts = dict(parse_option(o) for o in options) if options else None
    log = None if as_json else (lambda s: click.echo(s, err=True))
    r = run_adapt(bundle, target_dir, out, method=method, iters=iters, minutes=minutes, memory_mb=memory_mb,
                  batch=batch, device=device, export=do_export, labels=labels, options=opts, seed=seed, threads=threads, log=log,
                  started_at=started, select=select)
    if as_json:
        emit_json({"bundle": str(r.bundle), "iterations": r.iterations, "stopped_because": r.stopped_because,
                   "collapsed": r.collapsed, "message": r.message, "wall_time_s": r.wall_time_s,
                   "peak_rss_mb": r.peak_rss_mb, "peak_cuda_mb": r.peak_cuda_mb, "before": r.before, "after": r.after,
                   "accuracy": r.accuracy, "export": r.export, "adaptation": r.manifest})
        if r.collapsed:
            sys.exit(3)
        return
    b, a = r.before, r.after
    if r.collapsed:
        click.secho(f"warning: {r.message}", fg="yellow", err=True)
    why = {"iterations": "the planned iterations done"}.get(r.stopped_because, r.stopped_because)
    click.echo(f"{method}: {r.iterations} iterations in {r.wall_time_s:.0f}s (stopped: {why}); "
               f"peak RSS {r.peak_rss_mb:.0f} MiB" + (f", peak CUDA {r.peak_cuda_mb:.0f} MiB" if r.peak_cuda_mb else ""))
    sel = r.manifest["selection"]
    if sel["rule"] == "info_max":
        score = {"info_max": "information maximisation",
                 "confidence_minus_drift": "confidence minus score drift"}.get(sel.get("score", "info_max"), sel.get("score"))
        click.echo(f"  wrote the state with the highest {score}: {sel['written']}")
    for line in adaptation_of(r.manifest["task"]).summary_lines(b, a):
        click.echo(line)
    if r.accuracy:
        metric = {"miou": "mIoU", "map": "mAP"}.get(r.accuracy["metric"], r.accuracy["metric"])
        click.echo(f"  {metric} on {r.accuracy['data']} {r.accuracy['before']:.1%} -> {r.accuracy['after']:.1%} "
                   "(labels used for this report only)")
    skipped = r.manifest["target"]["files_skipped"]
    if skipped:
        click.echo(f"  skipped {skipped} target files (listed with the reason in the manifest)")
    click.echo(f"bundle: {r.bundle}")
    if r.collapsed:
        sys.exit(3)

"""``edgeda bench`` (wired lazily from :mod:`edgeda.cli`)."""
from __future__ import annotations

import click

from ..console import emit_json, handle_errors
from ..errors import EdgedaError
from .harness import bench as run_bench, write_json
from .report import plot, table


def _list(text: str, kind=str) -> list:
    try:
        return [kind(p.strip()) for p in text.split(",") if p.strip()]
    except ValueError:
        raise EdgedaError(f"expected a comma-separated list, got {text!r}") from None


def _resolution(res: dict) -> str:
    i = res.get("input") or {}
    return f"{i.get('channels', '?')}x{i.get('height', '?')}x{i.get('width', '?')} (CxHxW)"


@click.command()
@click.argument("bundle", type=click.Path())
@click.option("--backend", default="torch,ort", show_default=True, help="comma-separated: torch, ort, trt")
@click.option("--batch", default="1,8,32", show_default=True, help="comma-separated batch sizes")
@click.option("--precision", default="fp32", show_default=True, help="comma-separated: fp32, fp16, int8")
@click.option("--warmup", default=10, show_default=True, help="untimed calls per configuration")
@click.option("--iters", type=int, show_default="100", help="timed calls per configuration")
@click.option("--seconds", type=float, help="time each configuration for this long instead of --iters")
@click.option("--threads", type=int, show_default="the libraries' own (one per core)", help="CPU threads for torch and ONNX Runtime")
@click.option("--device", default="cpu", show_default=True, help="cpu | cuda (torch/ort; trt is always cuda)")
@click.option("--rounds", default=5, show_default=True, help="interleaved rounds over the configurations")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="write the full result here ('-': stdout)")
@click.option("--plot", "plot_out", type=click.Path(dir_okay=False), help="PNG of latency distributions")
@click.option("--plugins", type=click.Path(dir_okay=False), help="libedgeda_plugins.so, for engines built with --plugins")
@handle_errors
def bench(bundle, backend, batch, precision, warmup, iters, seconds, threads, device, rounds, json_out, plot_out,
          plugins) -> None:
    """Latency percentiles, throughput and memory per backend x precision x batch."""
    if iters is not None and seconds is not None:
        raise EdgedaError("give --iters or --seconds, not both")
    batches = _list(batch, int)
    if not batches or min(batches) < 1:
        raise EdgedaError("--batch needs positive batch sizes")
    quiet = json_out == "-"
    res = run_bench(bundle, _list(backend), batches, _list(precision), warmup=warmup,
                    iters=iters if iters is not None or seconds is not None else 100, seconds=seconds,
                    threads=threads, device=device, rounds=rounds, log=None if quiet else click.echo,
                    plugin_library=plugins)
    if not res["results"]:
        raise EdgedaError("no configuration could run: " + "; ".join(s["reason"] for s in res["skipped"]))
    if plot_out:
        res["plot"] = str(plot(res, plot_out))
    if quiet:
        emit_json(res)
        return
    m = res["machine"]
    click.echo(f"\n{m.get('gpu') or m['cpu']}, {m['cores']} cores, threads={threads or 'default'}; input "
               f"{_resolution(res)}; latency in ms per batch")
    click.echo(table(res))
    if json_out:
        click.echo(f"json: {write_json(res, json_out)}")
    if plot_out:
        click.echo(f"plot: {res['plot']}")

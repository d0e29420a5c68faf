"""Human-readable views of a bench result: a text/markdown table and a PNG of latency distributions."""
from __future__ import annotations

from pathlib import Path

from ..utils import save_figure


def _label(r: dict) -> str:
    return f"{r['backend']} {r['precision']} b{r['batch']}"


def table(result: dict, markdown: bool = False) -> str:
    head = ["config", "min", "median", "p90", "p99", "max", "mean", "img/s", "mem MB"]
    rows = []
    for r in result["results"]:
        s = r["latency_ms"]
        rows.append([_label(r)] + [f"{s[k]:.3f}" for k in ("min", "median", "p90", "p99", "max", "mean")]
                    + [f"{r['throughput_ips']:.0f}", f"{r['peak_rss_increase_mb']:.0f}"])
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
    else:
        widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
        lines = ["  ".join(str(x).rjust(w) if i else str(x).ljust(w) for i, (x, w) in enumerate(zip(row, widths)))
                 for row in [head] + rows]
    for r in result["results"]:
        if "split_ms" in r:
            sp = r["split_ms"]
            lines.append(f"{_label(r)}: median H2D {sp['h2d_ms']['median']:.3f} ms, compute "
                         f"{sp['compute_ms']['median']:.3f} ms, D2H {sp['d2h_ms']['median']:.3f} ms")
    for s in result.get("skipped", []):
        lines.append(f"skipped {s['backend']} {s['precision']}: {s['reason']}")
    return "\n".join(lines)


def plot(result: dict, path: str | Path) -> Path:
    """Box plots of every configuration's latency samples, side by side (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["results"]
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(rows) + 2), 4.5))
    ax.boxplot([r["samples_ms"] for r in rows], whis=(1, 99), showfliers=True, flierprops={"markersize": 2})
    ax.set_xticks(range(1, len(rows) + 1), [_label(r) for r in rows], rotation=35, ha="right")
    ax.set_yscale("log")
    ax.set_ylabel("latency per batch (ms, log)")
    m = result.get("machine", {})
    i = result.get("input") or {}
    size = f", input {i['channels']}x{i['height']}x{i['width']}" if i else ""
    ax.set_title(f"{Path(result['bundle']).name} on {m.get('gpu') or m.get('cpu', '?')}{size} "
                 f"(whiskers p1-p99)", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)

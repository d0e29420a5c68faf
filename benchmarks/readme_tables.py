"""Write generated tables between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->`` in the
README.md that holds those markers: the summary in the top-level README, the full tables in
benchmarks/README.md.

Only benchmark scripts call this, so every number in either README comes from a results JSON.
"""
from __future__ import annotations

from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
BENCH_README = Path(__file__).resolve().parent / "README.md"


def replace_block(name: str, markdown: str, readme: Path | None = None) -> bool:
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    candidates = [readme] if readme is not None else [README, BENCH_README]
    readme = next((r for r in candidates if r.is_file() and start in (t := r.read_text()) and end in t), None)
    if readme is None:
        print(f"no README has a {start} ... {end} block; table not written")
        return False
    text = readme.read_text()
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(f"{head}{start}\n{markdown.rstrip()}\n{end}{tail}")
    return True


# How the tables name a task's headline metric (its key in the stored results) and show one value
METRIC_LABELS = {"miou": "mIoU %", "abs_rel": "abs rel (lower is better)"}
METRIC_VALUES = {"miou": lambda v: f"mIoU {100 * v:.1f} %", "abs_rel": lambda v: f"abs rel {v:.3f}"}


def fmt_pct(mean: float | None, std: float | None = None) -> str:
    if mean is None:
        return "–"
    return f"{100 * mean:.1f}" + (f" ± {100 * std:.1f}" if std is not None else "")

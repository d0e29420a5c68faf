"""Write generated tables into README.md between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->``.

Only benchmark scripts call this, so every number in the README comes from a results JSON.
"""
from __future__ import annotations

from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def replace_block(name: str, markdown: str, readme: Path = README) -> bool:
    text = readme.read_text()
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    if start not in text or end not in text:
        print(f"README has no {start} ... {end} block; table not written")
        return False
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(f"{head}{start}\n{markdown.rstrip()}\n{end}{tail}")
    return True


def fmt_pct(mean: float | None, std: float | None = None) -> str:
    if mean is None:
        return "–"
    return f"{100 * mean:.1f}" + (f" ± {100 * std:.1f}" if std is not None else "")

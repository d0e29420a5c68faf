"""What a person sees during training: a progress bar with losses and ETA, one line per evaluation."""
from __future__ import annotations

import time


def format_eval(rec: dict, task) -> str:
    key = next(iter(task.record_keys))
    fmt = (lambda v: f"{v:.1%}") if task.higher_is_better else (lambda v: f"{v:.3f}")
    name = "" if key == "acc" else f" {key}"
    parts = [f"iter {rec['iteration']}", f"source val{name} {fmt(rec[f'source_val_{key}'])}"]
    if f"target_test_{key}" in rec:
        parts.append(f"target test{name} {fmt(rec[f'target_test_{key}'])} (report only)")
    if "target_entropy" in rec:
        parts.append(f"target entropy {rec['target_entropy']:.3f}")
    return " | ".join(parts)


class Progress:
    """A rich progress bar with the running losses and ETA; silent when disabled."""

    def __init__(self, enabled: bool, total: int, start: int, title: str):
        self.enabled = enabled
        if not enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[losses]}"),
        )
        self.task = self.progress.add_task(title, total=total, completed=start, losses="")
        self.progress.start()
        self._last = 0.0

    def update(self, done: int, losses: dict) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if now - self._last > 0.2:
            text = " ".join(f"{k.split('/')[-1]}={v:.3f}" for k, v in losses.items())
            self.progress.update(self.task, completed=done, losses=text)
            self._last = now

    def print(self, text: str) -> None:
        if self.enabled:
            self.progress.console.print(text)

    def close(self) -> None:
        if self.enabled:
            self.progress.stop()

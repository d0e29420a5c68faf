"""What a person sees during training: a progress bar with losses and ETA, one line per evaluation."""
from __future__ import annotations

import time


def _format_eval(rec: dict) -> str:
    parts = [f"iter {rec['iteration']}", f"source val {rec['source_val_acc']:.1%}"]
    if "target_test_acc" in rec:
        parts.append(f"target test {rec['target_test_acc']:.1%} (report only)")
    if "target_entropy" in rec:
        parts.append(f"target entropy {rec['target_entropy']:.3f}")
    return " | ".join(parts)


class _Progress:
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

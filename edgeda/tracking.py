"""One score tracker for every place that keeps "the best state so far": the trainer's model
selection (``--select``) and the on-device adaptation's selection and rollback."""
from __future__ import annotations

from typing import Any, Callable


class BestState:
    """The state with the highest score offered so far.

    ``offer(score, tag, snapshot)`` keeps ``snapshot()`` (called only when kept) when ``score`` is
    higher than the kept one, or equal and ``ties`` is true (a later state wins a tie by default).
    ``tag`` says which state it is (an iteration, ``"shipped"``...). ``as_dict``/``from_dict`` keep it
    in a checkpoint."""

    def __init__(self, score: float | None = None, tag: Any = None, state: Any = None):
        self.score, self.tag, self.state = score, tag, state

    @property
    def empty(self) -> bool:
        return self.score is None

    def offer(self, score: float, tag: Any, snapshot: Callable[[], Any], *, ties: bool = True) -> bool:
        if self.score is None or score > self.score or (ties and score == self.score):
            self.score, self.tag, self.state = float(score), tag, snapshot()
            return True
        return False

    def as_dict(self) -> dict | None:
        return None if self.empty else {"iteration": self.tag, "score": self.score, "weights": self.state}

    @classmethod
    def from_dict(cls, d: dict | None) -> "BestState":
        return cls() if not d else cls(d["score"], d["iteration"], d["weights"])

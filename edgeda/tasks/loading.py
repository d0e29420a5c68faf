"""Reading a domain as a task's data: one rule for every place that loads data for a model."""
from __future__ import annotations

from ..data import load_domain
from .spec import TaskSpec
from .base import task_of


def load_for_task(spec_text: str, task_spec: TaskSpec, *, labeled: bool, what: str | None = None,
                  split: str | None = None, model: str = "bundle"):
    """The domain ``spec_text`` names, read at ``task_spec``'s size and channels and checked by the
    task (:meth:`~edgeda.tasks.Task.check_data`): its kind of data, usable, labeled for it where
    ``labeled``, with the spec's classes. ``what``: how the message names the data (default the
    spec); ``split``: a built-in domain's split; ``model``: what the data is for, in the message."""
    dom = load_domain(spec_text, labeled=labeled, size=task_spec.image_size, channels=task_spec.channels,
                      split=split, task=task_spec.task)
    task_of(task_spec).check_data(dom, task_spec, labeled=labeled, what=what or spec_text, model=model)
    return dom

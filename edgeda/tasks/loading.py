"""Reading a domain as a task's data: one rule for every place that loads data for a model."""
from __future__ import annotations

from ..data import load_domain
from ..data.align import align_classes, reads_by_name
from ..errors import DataError
from .spec import TaskSpec
from .base import task_of


def load_for_task(spec_text: str, task_spec: TaskSpec, *, labeled: bool, what: str | None = None,
                  split: str | None = None, model: str = "bundle"):
    """The domain ``spec_text`` names, read at ``task_spec``'s size and channels and checked by the
    task (:meth:`~edgeda.tasks.Task.check_data`): its kind of data, usable, labeled for it where
    ``labeled``, with the spec's classes (labelled data naming other classes is read with the spec's, by
    name, where they share some: :func:`edgeda.data.align.align_classes`). ``what``: how the message
    names the data (default the spec); ``split``: a built-in domain's split; ``model``: what the data is
    for, in the message."""
    dom = load_domain(spec_text, labeled=labeled, size=task_spec.image_size, channels=task_spec.channels,
                      split=split, task=task_spec.task)
    if labeled and reads_by_name(dom, list(task_spec.classes or []), any_shared=task_of(task_spec).aligns_classes):
        try:  # scored on the classes both name (the rest left out, said in the load report's warnings)
            dom, _ = align_classes(dom, list(task_spec.classes), what or spec_text)
        except DataError:
            pass  # no class in common: the task's check says what differs
    task_of(task_spec).check_data(dom, task_spec, labeled=labeled, what=what or spec_text, model=model)
    return dom

"""Tasks: what differs between classification, segmentation, depth and detection, in one object each.

The trainer, evaluation, selection, export, predict and bench ask the task object of a
:class:`~edgeda.tasks.spec.TaskSpec` (``task_of(spec)``) instead of testing its name. A task owns its
source loss, its streaming metric, the headline score, what label-free validators see of its
outputs, the parity comparison of an export, and how its outputs are drawn and written.
"""
from .base import TASKS, Task, task_of
from . import classification, depth, detection, segmentation  # noqa: F401,E402  (register the tasks)
from .loading import load_for_task  # noqa: E402

__all__ = ["TASKS", "Task", "load_for_task", "task_of"]

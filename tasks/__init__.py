"""Tasks: data splits, prompts, rewards and metrics (see :mod:`tasks.base`).

``import tasks`` is cheap: no torch, no transformers; task modules load on demand.
"""

from tasks.base import SPLITS, Example, Task
from tasks.registry import available, get_task, names, task_class

__all__ = ["SPLITS", "Example", "Task", "available", "get_task", "names", "task_class"]

"""Score each generation with the task's reward once per evaluation.

An evaluation asks for the same rewards more than once: the task's metrics (a custom reward's
mean, ``--task prompts``' ``reward`` column), the generations' rows (``--samples``, the paired
comparison of several policies) and, in ``rlgf difficulty``, each bucket's metrics again. A
reward can be costly — a request per completion to ``--reward-url``, a custom function that
runs a program, a ``--reward-model`` — so within :func:`rewards_once` the task's ``reward``
answers a call whose every generation it has already scored from what it returned then, and
scores the whole call otherwise (so a batch is scored as the reward was given it, never split up).

Only what goes through ``task.reward`` is remembered: the sentiment tasks' ``sentiment`` metric
runs their classifier itself (a metric stays the task's own whatever ``--reward`` says), so it
scores the generations once for the metric and once for the rows, as it did before.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from tasks.base import Task


@contextlib.contextmanager
def rewards_once(task: Task) -> Iterator[Task]:
    """Within the block, ``task.reward`` remembers what it returned for each (example, prompt,
    completion), and a call whose generations it has all scored costs nothing."""
    if "reward" in vars(task):  # already remembering (nested)
        yield task
        return
    own = task.reward
    seen: dict[tuple, float] = {}

    def reward(prompts, completions, examples) -> list[float]:
        keys = [(id(ex), p, c) for ex, p, c in zip(examples, prompts, completions)]
        if len(keys) == len(completions) and keys and all(k in seen for k in keys):
            return [seen[k] for k in keys]
        values = own(prompts, completions, examples)
        if len(values) == len(keys):
            seen.update(zip(keys, values))
        return values

    task.reward = reward  # an instance attribute over the class's method, removed after
    try:
        yield task
    finally:
        del task.reward

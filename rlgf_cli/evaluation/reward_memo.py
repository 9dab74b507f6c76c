"""Score each generation with the task's reward once per evaluation.

An evaluation asks for the same rewards more than once: the task's metrics (a custom reward's
mean, ``--task prompts``' ``reward`` column, the sentiment tasks' ``sentiment``), the generations'
rows (``--samples``, the paired comparison of several policies) and, in ``rlgf difficulty``, each
bucket's metrics again. A reward can be costly — a request per completion to ``--reward-url``, a
custom function that runs a program, a ``--reward-model`` — so within :func:`rewards_once` the
task's ``reward``, and the scoring methods it names in ``scored_once`` (the sentiment tasks'
classifier, which their ``sentiment`` metric runs whatever ``--reward`` says), answer a call whose
every generation they have already scored from what they returned then, and score the whole call
otherwise (so a batch is scored as it was given, never split up).
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

from tasks.base import Task


def _remembering(own: Callable, key: Callable) -> Callable:
    """``own`` answering from what it returned before when every item of a call was seen."""
    seen: dict[tuple, float] = {}

    def scored(*args, **kwargs) -> list[float]:
        if kwargs:  # not the form evaluations call: scored afresh
            return own(*args, **kwargs)
        keys = key(*args)
        if keys and all(k in seen for k in keys):
            return [seen[k] for k in keys]
        values = own(*args)
        if len(values) == len(keys):
            seen.update(zip(keys, values))
        return values

    return scored


def _reward_keys(prompts, completions, examples) -> list[tuple]:
    keys = [(id(ex), p, c) for ex, p, c in zip(examples, prompts, completions)]
    return keys if len(keys) == len(completions) else []  # an odd call is never answered from memory


def _text_keys(prompts, completions) -> list[tuple]:
    return list(zip(prompts, completions)) if len(prompts) == len(completions) else []


#: set on a task while :func:`rewards_once` remembers for it (a nested block adds nothing)
_ACTIVE = "_rlgf_rewards_once"


@contextlib.contextmanager
def rewards_once(task: Task) -> Iterator[Task]:
    """Within the block, ``task.reward`` (and each method in ``task.scored_once``) remembers
    what it returned for each generation, and a call whose generations it has all scored
    costs nothing. A method already replaced on the task object itself is left as it is."""
    if vars(task).get(_ACTIVE):
        yield task
        return
    names = [n for n in dict.fromkeys(["reward", *task.scored_once])
             if n not in vars(task) and callable(getattr(task, n, None))]
    installed: list[str] = []
    setattr(task, _ACTIVE, True)
    try:
        for name in names:  # instance attributes over the class's methods, removed after
            setattr(task, name, _remembering(getattr(task, name), _reward_keys if name == "reward" else _text_keys))
            installed.append(name)
        yield task
    finally:
        for name in installed:
            delattr(task, name)
        delattr(task, _ACTIVE)

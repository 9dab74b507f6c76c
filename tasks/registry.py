"""Which tasks exist, resolved lazily by name.

Each task is a ``"module:Class"`` string, imported only when asked for, so ``import tasks``
(and ``rlgf --help``) stays free of torch and transformers; task modules import them
inside their methods. Adding a task is one line in :data:`TASKS`.
"""

from __future__ import annotations

import importlib
import inspect

from backends.errors import RlgfError, with_suggestion
from tasks.base import Task

#: task name → "module:Class"
TASKS: dict[str, str] = {
    "rotten-tomatoes": "tasks.rotten_tomatoes:RottenTomatoesTask",
    "imdb": "tasks.imdb:ImdbTask",
    "commongen": "tasks.commongen:CommonGenTask",
}


def names() -> list[str]:
    return sorted(TASKS)


def _normalise(name: str) -> str:
    return str(name).strip().lower().replace("_", "-").replace(" ", "-")


def task_class(name: str) -> type[Task]:
    """The class registered as ``name`` (case and ``_``/``-`` insensitive)."""
    key = _normalise(name)
    if key not in TASKS:
        message = with_suggestion(f"unknown task {name!r}", key, TASKS, cutoff=0.5)
        raise RlgfError(message, hint=f"known tasks: {', '.join(names())} (see `rlgf tasks`)")
    module_name, _, attr = TASKS[key].partition(":")
    return getattr(importlib.import_module(module_name), attr)


def train_defaults(name: str) -> dict:
    """The task's own ``rlgf train`` defaults for RL algorithms (``{}`` for an unknown name:
    building the task reports that)."""
    try:
        return dict(task_class(name).train_defaults)
    except RlgfError:
        return {}


def constructor_options(cls: type[Task]) -> list[str]:
    """The keyword options a task's constructor accepts (following ``**options`` to its base)."""
    options: list[str] = []
    for klass in cls.__mro__:
        if "__init__" not in vars(klass) or klass in (Task, object):
            continue
        params = inspect.signature(klass.__init__).parameters.values()
        options += [p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name != "self"]
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return list(dict.fromkeys(options))


def task_options(cls: type[Task]) -> list[str]:
    """The options :func:`get_task` accepts for ``cls``: its constructor's, plus ``reward``
    (every task takes a custom ``module:function`` reward, see :mod:`tasks.custom_reward`)."""
    options = constructor_options(cls)
    return options if "reward" in options else options + ["reward"]


def get_task(name: str, **options) -> Task:
    """Build task ``name`` with ``options`` (e.g. ``data=``, ``reward_model=``, ``seed=``,
    ``max_new_tokens=``). Options given as ``None`` are left at the task's default, so a
    caller can pass every option it has. Unknown names and options raise :class:`RlgfError`.

    ``reward="module:function"`` works for every task: a task whose constructor has no
    ``reward`` option gets it through :meth:`~tasks.base.Task.with_reward`."""
    cls = task_class(name)
    options = {k: v for k, v in options.items() if v is not None}
    known = task_options(cls)
    unknown = [k for k in options if k not in known]
    if unknown:
        bad = unknown[0]
        message = with_suggestion(f"task {cls.name} has no option {bad!r}", bad, known, n=1)
        raise RlgfError(message, hint=f"its options: {', '.join(known)}")
    custom = None
    if "reward" in options and "reward" not in constructor_options(cls):
        from tasks.custom_reward import CustomReward, is_custom_spec

        spec = options.pop("reward")
        if not is_custom_spec(spec):
            raise RlgfError(
                f"task {cls.name} has no reward named {spec!r} (its reward: {cls.reward_name})",
                hint="leave --reward out for the task's own reward, or pass module:function for a custom one",
            )
        custom = CustomReward(spec)
    task = cls(**options)
    return task if custom is None else task.with_reward(custom)


def available() -> list[dict]:
    """One row per task for ``rlgf tasks``: name, description, data source, default learner,
    reward and metrics (imports each task's module, which does not import torch)."""
    rows = []
    for name in names():
        cls = task_class(name)
        rows.append(
            {
                "name": name,
                "description": cls.description,
                "data_source": cls.data_source,
                "default_learner": cls.default_learner,
                "reward": cls.reward_name,
                "metrics": list(cls.metric_names),
                "options": task_options(cls),
            }
        )
    return rows

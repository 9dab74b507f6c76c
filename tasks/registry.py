"""Which tasks exist, resolved lazily by name.

Each task is a ``"module:Class"`` string, imported only when asked for, so ``import tasks``
(and ``rlgf --help``) stays free of torch and transformers; task modules import them
inside their methods. Adding a built-in task is one line in :data:`TASKS`; another package
adds tasks through the ``rlgf.tasks`` entry-point group (a built-in name cannot be taken)::

    [project.entry-points."rlgf.tasks"]
    my-task = "my_package.tasks:MyTask"     # a subclass of tasks.base.Task
"""

from __future__ import annotations

import importlib
import inspect
import logging
from importlib import metadata

from backends.errors import RlgfError, first_line, with_suggestion
from tasks.base import SAMPLING_OPTIONS, Task

#: task name → "module:Class"
TASKS: dict[str, str] = {
    "rotten-tomatoes": "tasks.rotten_tomatoes:RottenTomatoesTask",
    "imdb": "tasks.imdb:ImdbTask",
    "commongen": "tasks.commongen:CommonGenTask",
    "prompts": "tasks.prompts:PromptsTask",
}
ENTRY_POINT_GROUP = "rlgf.tasks"
log = logging.getLogger(__name__)
#: the shadowing entry points already warned about: :func:`registered` runs many times a command
_warned: set[tuple[str, str]] = set()


def registered() -> dict[str, dict]:
    """``name → {"target", "source"}``: the built-in tasks, then the entry-point plug-ins."""
    found = {name: {"target": target, "source": "built-in"} for name, target in TASKS.items()}
    try:
        points = list(metadata.entry_points(group=ENTRY_POINT_GROUP))
    except Exception as exc:  # noqa: BLE001 - broken metadata must not break the CLI
        log.warning("could not read the %s entry points: %s", ENTRY_POINT_GROUP, exc)
        points = []
    for ep in points:
        name = _normalise(ep.name)
        dist = getattr(ep, "dist", None)
        package = getattr(dist, "name", None) if dist is not None else None
        if name in found:
            if found[name]["target"] != ep.value and (ep.name, ep.value) not in _warned:
                _warned.add((ep.name, ep.value))  # said once per process, not at every lookup
                log.warning("ignoring the task entry point %s = %s%s: %r is already %s (rename the entry point)",
                            ep.name, ep.value, f" of {package}" if package else "", name, target_of(found[name]))
            continue
        found[name] = {"target": ep.value, "source": f"entry point ({package})" if package else "entry point",
                       "entry_point": f"{ep.name} = {ep.value}" + (f" of {package}" if package else "")}
    return found


def names() -> list[str]:
    return sorted(registered())


def _normalise(name: str) -> str:
    return str(name).strip().lower().replace("_", "-").replace(" ", "-")


def task_class(name: str) -> type[Task]:
    """The class registered as ``name`` (case and ``_``/``-`` insensitive)."""
    key = _normalise(name)
    known = registered()
    if key not in known:
        message = with_suggestion(f"unknown task {name!r}", key, known, cutoff=0.5)
        raise RlgfError(message, hint=f"known tasks: {', '.join(sorted(known))} (see `rlgf tasks`)")
    info = known[key]
    target = info["target"]
    module_name, _, attr = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except Exception as exc:  # noqa: BLE001 - a plug-in's module may raise anything at import
        raise RlgfError(f"task {key} ({target_of(info)}) failed to load: {_reason(exc)}",
                        "fix or reinstall the package that provides it (or uninstall it)") from None
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise RlgfError(f"task {key} ({target_of(info)}) is not a tasks.base.Task subclass",
                        "a task plug-in must subclass tasks.base.Task")
    return cls


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


def option_default(cls: type[Task], name: str):
    """The default of the constructor option ``name`` of ``cls`` (``None`` if it has none)."""
    for klass in cls.__mro__:
        if "__init__" not in vars(klass) or klass in (Task, object):
            continue
        params = inspect.signature(klass.__init__).parameters
        if name in params:
            default = params[name].default
            return None if default is inspect.Parameter.empty else default
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            break
    return None


#: length options every task takes (a plug-in's constructor need not know them)
GENERIC_LENGTHS = ("prompt_max_tokens", "max_new_tokens")


def task_options(cls: type[Task]) -> list[str]:
    """The options :func:`get_task` accepts for ``cls``: its constructor's, plus ``reward``
    (every task takes a custom ``module:function`` reward, see :mod:`tasks.custom_reward`) and
    the roll-outs' sampling (``temperature``, ``top_k``, ``top_p``: :meth:`~tasks.base.Task.with_sampling`)
    and the lengths ``prompt_max_tokens`` and ``max_new_tokens`` (the :class:`~tasks.base.Task`
    attributes, set on the task where its constructor does not take them)."""
    options = constructor_options(cls)
    return options + [name for name in ("reward", *SAMPLING_OPTIONS, *GENERIC_LENGTHS) if name not in options]



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
    constructor = constructor_options(cls)
    sampling = {k: options.pop(k) for k in SAMPLING_OPTIONS if k in options and k not in constructor}
    if "prompt_max_tokens" in options and int(options["prompt_max_tokens"]) < 1:  # for every task, here
        raise RlgfError(f"--prompt-max-tokens must be at least 1, not {options['prompt_max_tokens']}",
                        "e.g. --prompt-max-tokens 256")
    lengths = {k: int(options.pop(k)) for k in GENERIC_LENGTHS if k in options and k not in constructor}
    if lengths.get("max_new_tokens", 1) < 1:
        raise RlgfError(f"--max-new-tokens must be at least 1, not {lengths['max_new_tokens']}", "e.g. --max-new-tokens 24")
    task = cls(**options)
    if sampling:
        task.with_sampling(**sampling)
    if "prompt_max_tokens" in lengths:
        task.prompt_max_tokens = lengths["prompt_max_tokens"]
    if "max_new_tokens" in lengths:  # and no minimum above it
        task.max_new_tokens = lengths["max_new_tokens"]
        task.min_new_tokens = min(task.min_new_tokens, task.max_new_tokens)
    return task if custom is None else task.with_reward(custom)


def available() -> list[dict]:
    """One row per task for ``rlgf tasks``: name, description, data source, default learner,
    reward and metrics (imports each task's module, which does not import torch)."""
    rows = []
    for name, info in sorted(registered().items()):
        try:
            cls = task_class(name)
            row = {
                "name": name,
                "source": info["source"],
                "description": cls.description,
                "data_source": cls.data_source,
                "default_learner": cls.default_learner,
                "reward": cls.reward_name,
                "metrics": list(cls.metric_names),
                "options": task_options(cls),
            }
        except Exception as exc:  # noqa: BLE001 - a broken plug-in is listed with the reason, not fatal
            reason = exc.message if isinstance(exc, RlgfError) else \
                f"task {name} ({target_of(info)}) failed to load: {_reason(exc)}"
            row = {"name": name, "description": reason, "data_source": "", "default_learner": "",
                   "reward": "", "metrics": [], "options": [], "source": info["source"], "error": reason}
        rows.append(row)
    return rows


def target_of(info: dict) -> str:
    """Where a task comes from, for error messages: ``entry point NAME = module:Class of PACKAGE``
    for a plug-in, ``module:Class`` for a built-in task."""
    return f"entry point {info['entry_point']}" if "entry_point" in info else info["target"]


def _reason(exc: BaseException) -> str:
    """``Type: first line of the message`` (an error is printed as one line)."""
    line = first_line(exc)
    return line if line == type(exc).__name__ else f"{type(exc).__name__}: {line}"

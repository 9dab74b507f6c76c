"""Custom rewards: ``--reward module:function`` for any task.

The function is called once per batch of finished episodes as
``function(prompts, completions, references)`` — three lists of the same length, with
``references[i]`` the list of reference texts of episode ``i`` — and must return one real
number per episode (a list, tuple, numpy array or 1-D tensor). ``module`` is imported
normally (from ``sys.path``, then from the current folder); ``path/to/file.py:function``
loads a file directly.

:func:`load_custom_reward` imports and checks the callable up front (a missing module, a
missing attribute or a signature that cannot take three arguments are errors before any
training starts); :class:`CustomReward` checks every result (shape, numbers, finiteness)
and turns problems into :class:`~backends.errors.RlgfError`.

:meth:`Task.with_reward <tasks.base.Task.with_reward>` gives any task a custom reward: a copy
of the task that is still an instance of its class, with :class:`CustomRewardTask` in front
of it, so that only :meth:`reward` changes: the task's own metrics (e.g. ``sentiment``, the
task's classifier score) stay the task's. :func:`tasks.registry.get_task` does this for tasks
whose constructor has no ``reward`` option; tasks with named rewards (CommonGen) accept
``module:function`` themselves.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import math
import numbers
import os
import re
import sys
from pathlib import Path
from typing import Callable, Sequence

from backends.errors import RlgfError
from tasks.base import Task

SIGNATURE = "(prompts, completions, references) -> list[float]"
_SPEC = re.compile(r"^(?P<module>[^:]+?):(?P<attr>[A-Za-z_][A-Za-z0-9_.]*)$")


def is_custom_spec(value) -> bool:
    """Whether a ``--reward`` value names a callable (``module:function``) rather than a reward name."""
    return isinstance(value, str) and bool(_SPEC.match(value.strip()))


def _import_failed(spec: str, what: str, exc: BaseException) -> RlgfError:
    """The error for a reward module whose import raised ``exc`` (``what``: the file or module)."""
    if isinstance(exc, SystemExit):
        return RlgfError(f"custom reward {spec!r}: importing {what} called sys.exit({exc.code!r})",
                         "a reward module must not exit when it is imported: guard its script part with "
                         "if __name__ == \"__main__\":")
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        return RlgfError(f"custom reward {spec!r}: importing {what} raised ModuleNotFoundError: {exc}",
                         f"install the package that provides {exc.name.split('.')[0]!r} into the environment rlgf "
                         f"runs in ({sys.executable} -m pip install …)")
    return RlgfError(f"custom reward {spec!r}: importing {what} raised {type(exc).__name__}: {exc}",
                     f"fix {what} so that it imports; python {what} shows the full error" if what.endswith(".py")
                     else f"fix {what} so that it imports; python -c 'import {what}' shows the full error")


def _import_module(name: str, spec: str):
    if name.endswith(".py") or os.sep in name or "/" in name:
        path = Path(name).expanduser()
        if not path.is_file():
            raise RlgfError(f"custom reward {spec!r}: file not found: {path}",
                            "pass --reward path/to/file.py:function with a path that exists (relative to the "
                            "current folder, or absolute)")
        mod_name = f"rlgf_custom_reward_{abs(hash(str(path.resolve())))}"
        if mod_name in sys.modules:
            return sys.modules[mod_name]
        file_spec = importlib.util.spec_from_file_location(mod_name, path)
        if file_spec is None or file_spec.loader is None:
            raise RlgfError(f"custom reward {spec!r}: cannot load {path} as a Python module")
        module = importlib.util.module_from_spec(file_spec)
        sys.modules[mod_name] = module
        try:
            with contextlib.redirect_stdout(sys.stderr):  # its prints must not mix into --json - output
                file_spec.loader.exec_module(module)
        except (Exception, SystemExit) as exc:
            sys.modules.pop(mod_name, None)
            raise _import_failed(spec, str(path), exc) from None
        return module
    missing = RlgfError(
        f"custom reward {spec!r}: no module named {name!r}",
        hint="put the module on PYTHONPATH or in the current folder, or pass path/to/file.py:function",
    )
    try:
        with contextlib.redirect_stdout(sys.stderr):
            return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name.split(".")[0]:  # the module exists but one of its imports does not
            raise _import_failed(spec, name, exc) from None
        if os.getcwd() in sys.path:
            raise missing from None
        sys.path.insert(0, os.getcwd())  # a module in the current folder (console scripts omit it)
        try:
            with contextlib.redirect_stdout(sys.stderr):
                return importlib.import_module(name)
        except ModuleNotFoundError as exc2:
            if exc2.name != name.split(".")[0]:  # found in the current folder; one of its imports is missing
                raise _import_failed(spec, name, exc2) from None
            raise missing from None
        except (Exception, SystemExit) as exc2:
            raise _import_failed(spec, name, exc2) from None
        finally:
            if sys.path and sys.path[0] == os.getcwd():
                sys.path.pop(0)
    except (Exception, SystemExit) as exc:
        raise _import_failed(spec, name, exc) from None


def load_custom_reward(spec: str) -> Callable:
    """Import ``module:function`` and check that it can be called with three arguments."""
    match = _SPEC.match(str(spec).strip())
    if not match:
        raise RlgfError(f"bad custom reward {spec!r}", hint=f"use module:function, a callable {SIGNATURE}")
    module = _import_module(match["module"], spec)
    target = module
    for part in match["attr"].split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            where, hint = match["module"], f"define a function {SIGNATURE} there"
            file = getattr(module, "__file__", None)
            if file and not where.endswith(".py") and "/" not in where and os.sep not in where:
                where = f"{where} ({file})"  # which module was imported: another one (signal, test…) may shadow yours
                mine = Path(*match["module"].split(".")).with_suffix(".py")
                if mine.is_file() and mine.resolve() != Path(file).resolve():
                    hint = (f"that module comes before your {mine} on the import path: pass --reward "
                            f"{mine}:{match['attr']} (a file path), or rename your file")
            raise RlgfError(f"custom reward {spec!r}: {where} has no attribute {match['attr']!r}", hint=hint) from None
    if not callable(target):
        raise RlgfError(f"custom reward {spec!r} is not callable ({type(target).__name__})", hint=f"it must be {SIGNATURE}")
    try:
        inspect.signature(target).bind(None, None, None)
    except TypeError:
        raise RlgfError(
            f"custom reward {spec!r} cannot be called with three arguments", hint=f"it must be {SIGNATURE}"
        ) from None
    except ValueError:  # builtins without a signature: trust them
        pass
    return target


def _to_list(result) -> list | None:
    if hasattr(result, "detach") and hasattr(result, "tolist"):  # a torch tensor
        result = result.detach().cpu()
    if hasattr(result, "tolist") and getattr(result, "ndim", 1) <= 1:  # numpy / torch
        result = result.tolist()
    if isinstance(result, (list, tuple)):
        return list(result)
    return None


class CustomReward:
    """A checked ``(prompts, completions, references) -> list[float]`` callable."""

    def __init__(self, spec: str, function: Callable | None = None) -> None:
        self.spec = str(spec).strip()
        self.function = function if function is not None else load_custom_reward(self.spec)

    def __call__(self, prompts: Sequence[str], completions: Sequence[str], references: Sequence[Sequence[str]]) -> list[float]:
        prompts, completions = list(prompts), list(completions)
        references = [list(r) for r in references]
        n = len(completions)
        try:
            with contextlib.redirect_stdout(sys.stderr):  # its prints must not mix into --json - output
                result = self.function(prompts, completions, references)
        except RlgfError:
            raise
        except SystemExit as exc:  # not a clean exit of rlgf: the run stops with the reason
            raise RlgfError(f"custom reward {self.spec} called sys.exit({exc.code!r})",
                            "return one number per completion; raise an exception to stop on bad input") from None
        except Exception as exc:
            raise RlgfError(f"custom reward {self.spec} raised {type(exc).__name__}: {exc}") from exc
        values = _to_list(result)
        if values is None:
            raise RlgfError(
                f"custom reward {self.spec} returned {type(result).__name__}, not a list of {n} numbers",
                hint=f"it must be {SIGNATURE}",
            )
        if len(values) != n:
            raise RlgfError(
                f"custom reward {self.spec} returned {len(values)} values for {n} completions",
                hint="return one number per completion, in order",
            )
        out = []
        for i, value in enumerate(values):
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise RlgfError(
                    f"custom reward {self.spec} returned {type(value).__name__} {value!r} at index {i}, not a number",
                    hint=f"it must be {SIGNATURE}",
                )
            value = float(value)
            if not math.isfinite(value):
                raise RlgfError(f"custom reward {self.spec} returned {value} at index {i}", hint="rewards must be finite numbers")
            out.append(value)
        return out

    def for_examples(self, prompts, completions, examples) -> list[float]:
        """Call with :class:`~tasks.base.Example` objects (their ``references``)."""
        return self(prompts, completions, [list(ex.references) for ex in examples])


class CustomRewardTask(Task):
    """The layer :meth:`Task.with_reward <tasks.base.Task.with_reward>` puts in front of a
    task's class: :meth:`reward` is the :class:`CustomReward`; everything else (data, prompts,
    decoding, metrics, facts) is the task's own. Not built directly."""

    custom_reward: CustomReward

    def reward(self, prompts, completions, examples) -> list[float]:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts for {len(completions)} completions")
        return self.custom_reward.for_examples(prompts, completions, examples)

    def check_reward(self) -> None:
        """Nothing to check: the custom reward was imported and checked when it was loaded."""

    def info(self) -> dict:
        return {**super().info(), "reward": f"custom: {self.custom_reward.spec}"}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} reward={self.custom_reward.spec!r}>"

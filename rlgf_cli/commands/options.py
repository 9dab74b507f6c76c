"""Command-line options declared once: generated from :class:`~rlgf_cli.training.config.TrainConfig` fields.

Every ``rlgf train`` option comes from a field's metadata (help, panel, shown default), so
adding a field adds its flag, and the help cannot drift from the real default. The task
flags that ``eval``, ``difficulty`` and ``distill`` share with ``train`` are the same
generated options, minus the train-only help panel.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from typing import Annotated, Any, Callable, Optional

import typer

from rlgf_cli.training.config import TrainConfig, shown_default


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def option_help(f: dataclasses.Field) -> str:
    # the default is part of the help text, because the option's own default must stay None
    # ("not given", so a --config file is not overridden); "\[" keeps rich from eating it
    return f"{f.metadata.get('help', '')} \\[default: {shown_default(f)}]".strip()


def _value_type(cls: type, name: str) -> type:
    """``int`` for ``int`` and ``int | None`` (the option itself is always optional)."""
    hint = typing.get_type_hints(cls)[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args and type(None) in typing.get_args(hint) else hint


def config_option(name: str, cls: type = TrainConfig, *, panel: bool = True) -> Any:
    """``Annotated[Optional[T], typer.Option(...)]`` for the config field ``name``."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    kind = _value_type(cls, name)
    flag = flag_name(name)
    decls = [f"{flag}/--no-{flag[2:]}"] if kind is bool else [flag]
    option = typer.Option(*decls, help=option_help(f), show_default=False,
                          rich_help_panel=f.metadata.get("panel") if panel else None)
    return Annotated[Optional[kind], option]


def with_config_options(cls: type = TrainConfig) -> Callable[[Callable], Callable]:
    """Give a command ``func(*, own options…, **config)`` one keyword option per field of ``cls``.

    The generated options come first (in field order), then the command's own; each defaults
    to ``None``, meaning "not given", and reaches ``func`` in ``**config``.
    """

    def decorate(func: Callable) -> Callable:
        sig = inspect.signature(func, eval_str=True)
        own = [p.replace(kind=p.KEYWORD_ONLY) for p in sig.parameters.values() if p.kind is not p.VAR_KEYWORD]
        taken = {p.name for p in own}
        clash = [f.name for f in dataclasses.fields(cls) if f.name in taken]
        if clash:
            raise TypeError(f"{func.__name__} declares config fields by hand: {clash}")
        generated = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                       annotation=config_option(f.name, cls)) for f in dataclasses.fields(cls)]
        func.__signature__ = sig.replace(parameters=generated + own)
        return func

    return decorate


# -- the task flags of train, eval, difficulty and distill ------------------------------
Task = config_option("task", panel=False)
#: eval's and difficulty's: without it, the first checkpoint's own task (see build_eval_task)
CheckpointTask = Annotated[Optional[str], typer.Option(
    "--task", show_default=False,
    help="Task name (see `rlgf tasks`). \\[default: the first checkpoint's own task, with its run's data, reward "
         "and length (flags given win); else rotten-tomatoes]")]
Data = config_option("data", panel=False)
Reward = config_option("reward", panel=False)
RewardModel = config_option("reward_model", panel=False)
PromptField = config_option("prompt_field", panel=False)
ReferenceField = config_option("reference_field", panel=False)
ChatTemplate = config_option("chat_template", panel=False)
PromptMaxTokens = config_option("prompt_max_tokens", panel=False)
RewardLabel = config_option("reward_label", panel=False)
RewardUrl = config_option("reward_url", panel=False)
BertscoreModel = config_option("bertscore_model", panel=False)
Device = config_option("device", panel=False)
Precision = config_option("precision", panel=False)
Threads = Annotated[Optional[int], typer.Option(
    "--threads", show_default=False,
    help="CPU threads for torch in this process. \\[default: $OMP_NUM_THREADS, else one per core]")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress, table or summary output; errors still print.")]

"""The checks a :class:`~rlgf_cli.training.config.TrainConfig` passes before a run: each value's
type (as a TOML file may give any) and its range, each failure one :class:`RlgfError` naming the
option."""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any

from backends.errors import RlgfError

def check_types(cfg) -> None:
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if value is None:
            continue
        default = f.default
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if ok:
                setattr(cfg, f.name, float(value))
        elif isinstance(default, str) or f.name in ("learner", "guide", "init", "data", "reward_model", "out", "reward", "bertscore_model",
                                                            "guide_base_url", "prompt_field", "reference_field", "chat_template",
                                                            "guide_system", "guide_instruction", "guide_prefill", "guide_extensions",
                                                            "reward_label", "reward_url"):
            ok = isinstance(value, str)
        else:
            ok = True
        if not ok:
            raise RlgfError(
                f"config value {f.name} = {value!r} has the wrong type",
                f"expected {type(default).__name__ if default is not None else 'a string'}",
            )
    for name in ("lr", "beta", "ppopp_beta", "aggrevated_beta", "alpha", "guide_price_per_1k", "temperature", "top_p",
                 "guide_temperature", "guide_top_p"):
        value = getattr(cfg, name)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise RlgfError(f"config value {name} = {value!r} has the wrong type", "expected a number")
            setattr(cfg, name, float(value))
    for name in ("max_new_tokens", "switch_iteration", "min_new_tokens", "top_k", "guide_top_k"):
        value = getattr(cfg, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise RlgfError(f"config value {name} = {value!r} has the wrong type", "expected an integer")


def range_error(name: str, value: Any, want: str) -> RlgfError:
    flag = "--" + name.replace("_", "-")
    return RlgfError(f"{flag} must be {want} (got {value})", f"pass a value {want}")


def positive_int(cfg, *names: str) -> None:
    for n in names:
        if getattr(cfg, n) < 1:
            raise range_error(n, getattr(cfg, n), ">= 1")


def non_negative_int(cfg, *names: str) -> None:
    for n in names:
        if getattr(cfg, n) < 0:
            raise range_error(n, getattr(cfg, n), ">= 0")


def non_negative(cfg, *names: str) -> None:
    for n in names:
        v = getattr(cfg, n)
        if not math.isfinite(v) or v < 0:
            raise range_error(n, v, ">= 0")


def in_range(cfg, name: str, low: float, high: float, low_open: bool = False) -> None:
    v = getattr(cfg, name)
    bad = not math.isfinite(v) or v > high or (v <= low if low_open else v < low)
    if bad:
        lo = "(" if low_open else "["
        raise range_error(name, v, f"in {lo}{low:g}, {high:g}]")


GUIDE_MESSAGE_FLAGS = {"guide_system": "--guide-system", "guide_instruction": "--guide-instruction",
                       "guide_prefill": "--guide-prefill"}


def warn_unread_guide_messages(cfg, guide_class) -> None:
    """One warning naming those of ``--guide-system``, ``--guide-instruction`` and ``--guide-prefill``
    given where nothing reads them: no ``--guide``, or a guide whose backend (``guide_class``) builds
    the same options with or without it (every kind but a chat API model), so a run never goes on
    as if a message it was given had shaped the guide's requests."""
    import warnings

    from backends import RunSettings
    from backends.errors import RlgfWarning

    given = [name for name in GUIDE_MESSAGE_FLAGS if getattr(cfg, name, None) is not None]
    if not given:
        return
    if guide_class is None:
        why = "there is no --guide" if not cfg.guide else f"--alg {cfg.alg} uses no guide"
    else:
        plain = guide_class.options_from(RunSettings())
        unread = [n for n in given if guide_class.options_from(RunSettings(**{n: getattr(cfg, n)})) == plain]
        if not unread:
            return
        given, why = unread, f"guide {cfg.guide} is not a chat API model (openai-chat:…)"
    flags = ", ".join(GUIDE_MESSAGE_FLAGS[n] for n in given)
    warnings.warn(f"{flags} ignored: {why}", RlgfWarning, stacklevel=2)

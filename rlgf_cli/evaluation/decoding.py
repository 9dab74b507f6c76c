"""Decoding for evaluation: the task's default, the user's overrides, and what a backend can do.

Decoding follows the task (``task.eval_sampling``: sampling for the sentiment tasks, beam
search for CommonGen) unless overridden with :func:`resolve_sampling`. API policies cannot
beam-search: they decode greedily instead, and :func:`describe_decoding` says what was sent.
"""

from __future__ import annotations

from dataclasses import replace

from backends.base import Sampling
from backends.errors import RlgfError
from tasks.base import Task

DECODING_MODES = ("task", "greedy", "sample", "beam")


def check_decoding(mode: str | None = None, *, temperature=None, top_k=None, top_p=None, num_beams=None) -> None:
    """Raise :class:`RlgfError` for decoding options out of range or at odds (before anything loads)."""
    if mode is not None and mode not in DECODING_MODES:
        raise RlgfError(f"unknown decoding '{mode}'", f"use one of: {', '.join(DECODING_MODES)}")
    if temperature is not None and not (0.0 <= temperature <= 2.0):  # as train, serve and OpenAI's API
        raise RlgfError(f"--temperature must be in [0, 2] (got {temperature})", "0 means greedy")
    if top_k is not None and top_k < 0:
        raise RlgfError(f"--top-k must be >= 0 (got {top_k})", "0 turns top-k filtering off")
    if top_p is not None and not (0.0 < top_p <= 1.0):
        raise RlgfError(f"--top-p must be in (0, 1] (got {top_p})", "1 turns nucleus filtering off")
    if num_beams is not None and num_beams < 1:
        raise RlgfError(f"--num-beams must be >= 1 (got {num_beams})", "1 means no beam search")
    knobs = [name for name, v in (("--temperature", temperature), ("--top-k", top_k), ("--top-p", top_p)) if v is not None]
    if mode in ("greedy", "beam") and knobs:
        raise RlgfError(f"--decoding {mode} does not sample, so {knobs[0]} does not apply", "use --decoding sample")
    if num_beams is not None and num_beams > 1 and (mode in ("greedy", "sample") or knobs):
        raise RlgfError(f"--num-beams {num_beams} is beam search, which does not sample", "use --decoding beam")


def resolve_sampling(base: Sampling, mode: str | None = None, *, temperature=None, top_k=None, top_p=None,
                     num_beams=None) -> Sampling:
    """The task's decoding ``base`` with the user's overrides applied.

    ``mode``: ``task`` (or None) keeps ``base``; ``greedy``; ``beam`` (``num_beams`` beams, 5
    by default); ``sample`` (``base`` if it samples, else plain sampling at temperature 1).
    ``num_beams`` > 1 means beam search; ``temperature`` / ``top_k`` / ``top_p`` mean sampling
    with those values (temperature 0 is greedy).
    """
    check_decoding(mode, temperature=temperature, top_k=top_k, top_p=top_p, num_beams=num_beams)
    if mode == "greedy":
        return Sampling(do_sample=False)
    if mode == "beam" or (num_beams is not None and num_beams > 1):
        return Sampling(do_sample=False, num_beams=int(num_beams or 5))
    s = base
    if num_beams == 1 and s.num_beams > 1:
        s = Sampling(do_sample=False)
    if mode == "sample" or any(v is not None for v in (temperature, top_k, top_p)):
        if s.is_deterministic:
            s = Sampling(do_sample=True)
        s = replace(
            s,
            temperature=s.temperature if temperature is None else float(temperature),
            top_k=s.top_k if top_k is None else int(top_k),
            top_p=s.top_p if top_p is None else float(top_p),
        )
        if s.is_greedy:
            s = Sampling(do_sample=False)
    return s


def decoding_for(policy, task: Task, override: Sampling | None) -> Sampling:
    sampling = override or task.eval_sampling
    if sampling.num_beams > 1 and not policy.can_beam_search:
        return replace(sampling, num_beams=1, do_sample=False, temperature=0.0)
    return sampling


def describe_decoding(policy, sampling: Sampling) -> str:
    """What really ran: options the policy cannot enforce (an API's top-k) left out."""
    return policy.honoured(sampling).describe()

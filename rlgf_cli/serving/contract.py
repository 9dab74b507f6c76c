"""The ``POST /v1/completions`` contract of ``rlgf serve`` as pure functions (no I/O).

:func:`parse_completion_request` checks a body; every problem becomes an :class:`ApiError`
carrying the HTTP status and an OpenAI-style error object, never an exception that would kill
a request thread. :func:`build_reply` turns the policy's texts into the reply.

``usage`` and ``finish_reason`` come from re-counting the returned text with the policy's
tokenizer (``Policy.complete`` returns text only), so they can differ from the generated
token count by a token where a tokenizer does not round-trip; ``"length"`` means the text
holds at least ``max_tokens`` tokens, ``"stop"`` a stop string or an earlier end.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from backends.base import Sampling

from rlgf_cli.training.config import MAX_NEW_TOKENS

MAX_PROMPTS = 256
MAX_N = 64
MAX_STOPS = 4


class ApiError(Exception):
    """An HTTP error with an OpenAI-style body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type_: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type_

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class CompletionRequest:
    model: str
    prompts: list[str]
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_tokens: int = 0
    n: int = 1
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    echo: bool = False
    #: top alternatives per token in ``logprobs`` (None: no logprobs; see :mod:`rlgf_cli.serving.logprobs`)
    logprobs: int | None = None

    def sampling(self) -> Sampling:
        if self.temperature == 0:
            return Sampling(do_sample=False)
        return Sampling(do_sample=True, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)


def _bad(param: str, message: str) -> ApiError:
    return ApiError(400, message, param=param, code="invalid_value" if "must" in message else None)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _int(body: dict, name: str, default: int, low: int, high: int | None = None) -> int:
    v = body.get(name)
    if v is None:
        return default
    if not _is_int(v) or v < low or (high is not None and v > high):
        rng = f">= {low}" if high is None else f"between {low} and {high}"
        raise _bad(name, f"'{name}' must be an integer {rng}, got {v!r}")
    return v


def _num(body: dict, name: str, default: float, low: float, high: float, *, low_open: bool = False) -> float:
    v = body.get(name)
    if v is None:
        return default
    if not _is_num(v) or not low <= v <= high or (low_open and v == low):  # NaN fails both
        raise _bad(name, f"'{name}' must be a number in {'(' if low_open else '['}{low:g}, {high:g}], got {v!r}")
    return float(v)


#: fields both endpoints take only at their neutral value (clients send them by default)
NEUTRAL_ONLY = ("stream_options", "presence_penalty", "frequency_penalty", "logit_bias")
_ACCEPTED = {
    "model", "prompt", "max_tokens", "temperature", "top_p", "n", "stop", "seed", "echo", "user",
    "top_k", "min_tokens",
    # refused unless left at their neutral value:
    "logprobs",
    "stream", "suffix", "best_of", *NEUTRAL_ONLY,
}


def check_body(body: Any, accepted: set[str]) -> dict:
    """``body`` if it is a JSON object of ``accepted`` fields; else an :class:`ApiError` (400)."""
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body must be a JSON object, not {type(body).__name__}")
    unknown = sorted(set(body) - accepted)
    if unknown:
        raise ApiError(400, f"Unrecognized request argument supplied: {', '.join(unknown)}", param=unknown[0])
    return body


def parse_completion_request(body: Any) -> CompletionRequest:
    """Check a decoded JSON body; raises :class:`ApiError` (400) with the offending ``param``."""
    body = check_body(body, _ACCEPTED)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("model", "'model' must be a non-empty string")
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        prompts = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        prompts = list(prompt)
    elif isinstance(prompt, list) and prompt and all(_is_int(p) or isinstance(p, list) for p in prompt):
        raise _bad("prompt", "token-id prompts are not supported by rlgf serve; send text")
    else:
        raise _bad("prompt", "'prompt' must be a string or a non-empty list of strings")
    if len(prompts) > MAX_PROMPTS:
        raise _bad("prompt", f"at most {MAX_PROMPTS} prompts per request, got {len(prompts)}")
    stop = body.get("stop")
    if stop is None:
        stops: list[str] = []
    elif isinstance(stop, str):
        stops = [stop]
    elif isinstance(stop, list) and len(stop) <= MAX_STOPS and all(isinstance(s, str) for s in stop):
        stops = list(stop)
    else:
        raise _bad("stop", f"'stop' must be a string or a list of at most {MAX_STOPS} strings")
    stops = [s for s in stops if s]
    seed = parse_seed(body)
    echo = body.get("echo")
    if echo is not None and not isinstance(echo, bool):
        raise _bad("echo", f"'echo' must be a boolean, got {echo!r}")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise _bad("user", "'user' must be a string")
    n = _int(body, "n", 1, 1, MAX_N)
    _refuse_unsupported(body, n)
    top_k = _int(body, "top_k", 0, -1)
    logprobs = body.get("logprobs")
    if logprobs is not None and (not _is_int(logprobs) or not 0 <= logprobs <= 5):
        raise _bad("logprobs", f"'logprobs' must be an integer between 0 and 5, got {logprobs!r}")
    return CompletionRequest(
        model=model,
        prompts=prompts,
        max_tokens=_int(body, "max_tokens", 16, 0, MAX_NEW_TOKENS),
        temperature=_num(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_num(body, "top_p", 1.0, 0.0, 1.0, low_open=True),
        top_k=max(0, top_k),
        min_tokens=_int(body, "min_tokens", 0, 0, MAX_NEW_TOKENS),
        n=n,
        stop=stops,
        seed=seed,
        echo=bool(echo),
        logprobs=logprobs,
    )


def parse_seed(body: dict) -> int | None:
    """The request's ``seed``: an integer torch can seed with, or None."""
    seed = body.get("seed")
    if seed is not None and not _is_int(seed):
        raise _bad("seed", f"'seed' must be an integer, got {seed!r}")
    if seed is not None and not -(2 ** 63) <= seed < 2 ** 64:  # what torch.manual_seed takes
        raise _bad("seed", f"'seed' must be between -2**63 and 2**64 - 1, got {seed}")
    return seed


def _refuse_unsupported(body: dict, n: int) -> None:
    if body.get("stream") not in (None, False):
        raise _bad("stream", "streaming is not supported by rlgf serve; send stream: false")
    if body.get("suffix") not in (None, ""):
        raise _bad("suffix", "suffix (insertion) is not supported by rlgf serve")
    best_of = body.get("best_of")
    if best_of is not None and best_of != n:
        raise _bad("best_of", "best_of is not supported by rlgf serve (leave it unset)")
    refuse_unless_neutral(body)



def refuse_unless_neutral(body: dict) -> None:
    """400 for a penalty, a logit bias or stream options that would change the reply."""
    if body.get("stream_options") is not None:
        raise _bad("stream_options", "stream_options is not supported by rlgf serve")
    for name in ("presence_penalty", "frequency_penalty"):
        v = body.get(name)
        if v is not None and (not _is_num(v) or v != 0):
            raise _bad(name, f"'{name}' is not supported by rlgf serve (only 0)")
    bias = body.get("logit_bias")
    if bias not in (None, {}):
        raise _bad("logit_bias", "logit_bias is not supported by rlgf serve")


def _first_stop(text: str, stops: list[str]) -> int | None:
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None


def finish(text: str, stops: list[str], max_tokens: int, count_tokens: Callable[[str], int]) -> tuple[str, int, str]:
    """``(text cut at its first stop string, its tokens, finish_reason)`` of one completion:
    the generated tokens and whether EOS ended it where the policy says (a
    :class:`~backends.base.Completion`), else counted from the (cut) text."""
    cut = _first_stop(text, stops)
    if cut is None and getattr(text, "tokens", None) is not None:
        return str(text), text.tokens, "stop" if text.ended else "length"
    if cut is not None:
        text = text[:cut]
    n_tokens = count_tokens(text)
    return str(text), n_tokens, "stop" if cut is not None or n_tokens < max_tokens else "length"


def build_reply(req: CompletionRequest, texts: list[str], count_tokens: Callable[[str], int], model: str) -> dict:
    """The reply for ``texts`` (``n`` per prompt, in order); prompt tokens count once per prompt."""
    choices, completion_tokens = [], 0
    for i, text in enumerate(texts):
        text, n_tokens, reason = finish(text, req.stop, req.max_tokens, count_tokens)
        completion_tokens += n_tokens
        if req.echo:
            text = req.prompts[i // req.n] + text
        choices.append({"index": i, "text": text, "finish_reason": reason, "logprobs": None})
    prompt_tokens = sum(count_tokens(p) for p in req.prompts)
    return {
        "id": f"cmpl-{uuid.uuid4().hex}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }

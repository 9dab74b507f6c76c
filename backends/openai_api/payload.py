"""Pure helpers of the OpenAI backend: request bodies, reply parsing, retry delays, prices.

Nothing here does I/O, so each function is unit-tested as a plain function.

Sampling mapping (:func:`sampling_params`):

* greedy (``do_sample=False`` or ``temperature == 0``) → ``temperature: 0`` (no ``top_p``);
* sampling → ``temperature`` and ``top_p``, always (so a server's own defaults cannot change them);
* ``top_k`` is not an OpenAI parameter: it is dropped, unless ``extensions=True`` (servers
  such as vLLM and ``rlgf serve`` accept ``top_k`` and ``min_tokens`` as extra fields);
* beam search cannot be asked of the API: :func:`sampling_params` raises.
"""

from __future__ import annotations

import email.utils
import json
import random
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from backends.base import Sampling
from backends.errors import RlgfError

#: list prices in USD per 1,000 tokens (prompt, completion) at the time of writing; pass
#: ``price_per_1k`` to override, or for any other model
PRICES_PER_1K: dict[str, tuple[float, float]] = {
    "davinci-002": (0.002, 0.002),
    "babbage-002": (0.0004, 0.0004),
    "gpt-3.5-turbo-instruct": (0.0015, 0.002),
}

#: the longest ``Retry-After`` honoured as given; longer ones fall back to the backoff cap
MAX_RETRY_AFTER_S = 120.0


class MalformedResponse(ValueError):
    """A reply that is not a completion: retried, then reported as an RlgfError."""


@dataclass(frozen=True)
class ParsedCompletion:
    texts: list[str]
    finish_reasons: list[str | None]
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


def sampling_params(sampling: Sampling, *, extensions: bool = False) -> dict[str, Any]:
    """The decoding fields of a request (also part of the cache key)."""
    if sampling.num_beams > 1:
        raise RlgfError(
            f"the openai backend cannot beam-search (asked for {sampling.num_beams} beams)",
            hint="use greedy or sampled decoding for an API guide, or a local hf: guide for beams",
        )
    if sampling.is_greedy:
        return {"temperature": 0}
    # both always sent: a server's own generation_config must not change the distribution
    params: dict[str, Any] = {"temperature": float(sampling.temperature), "top_p": float(sampling.top_p)}
    if extensions and sampling.top_k:
        params["top_k"] = int(sampling.top_k)
    return params


def create_payload(
    model: str,
    prompts: Sequence[str],
    *,
    max_tokens: int,
    sampling: Sampling = Sampling(),
    min_tokens: int = 0,
    extensions: bool = False,
    n: int = 1,
) -> dict[str, Any]:
    """Keyword arguments of ``client.completions.create`` for ``prompts`` (one prompt → a string).

    They are the JSON body of ``POST /v1/completions``, except that non-OpenAI fields
    (``top_k``, ``min_tokens``) sit under ``extra_body``, which the SDK merges into the body.

    ``min_tokens`` is sent only with ``extensions=True``: the OpenAI API cannot enforce a
    minimum length (a model may stop early), and rejects unknown fields.
    """
    if not prompts:
        raise ValueError("create_payload needs at least one prompt")
    payload: dict[str, Any] = {
        "model": model,
        "prompt": prompts[0] if len(prompts) == 1 else list(prompts),
        "max_tokens": int(max_tokens),
    }
    params = sampling_params(sampling, extensions=extensions)
    payload.update((k, v) for k, v in params.items() if k != "top_k")
    if n != 1:
        payload["n"] = int(n)
    extra = {}
    if "top_k" in params:
        extra["top_k"] = params["top_k"]
    if extensions and min_tokens > 0:
        extra["min_tokens"] = int(min_tokens)
    if extra:
        payload["extra_body"] = extra
    return payload


def _as_count(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def reply_object(body: str | bytes | Mapping[str, Any]) -> Mapping[str, Any]:
    """A reply body as a JSON object without an ``error``; else :class:`MalformedResponse`."""
    if isinstance(body, (str, bytes, bytearray)):
        try:
            body = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise MalformedResponse(f"reply is not JSON ({exc})") from None
    if not isinstance(body, Mapping):
        raise MalformedResponse(f"reply is a JSON {type(body).__name__}, not an object")
    if body.get("error"):
        err = body["error"]
        msg = err.get("message") if isinstance(err, Mapping) else err
        raise MalformedResponse(f"reply carries an error: {msg}")
    return body


def parse_completion(body: str | bytes | Mapping[str, Any], n_prompts: int, n: int = 1) -> ParsedCompletion:
    """Texts (in prompt order), finish reasons and usage from a completions reply.

    Raises :class:`MalformedResponse` for anything that is not a well-formed completion
    with exactly ``n_prompts * n`` choices.
    """
    body = reply_object(body)
    choices = body.get("choices")
    expected = n_prompts * n
    if not isinstance(choices, list):
        raise MalformedResponse("reply has no 'choices' list")
    if len(choices) != expected:
        raise MalformedResponse(f"reply has {len(choices)} choices, expected {expected}")
    for c in choices:
        if not isinstance(c, Mapping) or not isinstance(c.get("text"), str):
            raise MalformedResponse("a choice has no 'text' string")
    indices = [c.get("index") for c in choices]
    if all(_as_count(i) is not None for i in indices):
        if sorted(indices) != list(range(expected)):
            raise MalformedResponse(f"choice indices {sorted(indices)} are not 0..{expected - 1}")
        choices = sorted(choices, key=lambda c: c["index"])
    reasons = [c.get("finish_reason") if isinstance(c.get("finish_reason"), str) else None for c in choices]
    usage = body.get("usage")
    prompt_tokens = completion_tokens = None
    if isinstance(usage, Mapping):
        prompt_tokens = _as_count(usage.get("prompt_tokens"))
        completion_tokens = _as_count(usage.get("completion_tokens"))
    return ParsedCompletion([c["text"] for c in choices], reasons, prompt_tokens, completion_tokens)


def parse_retry_after(headers: Mapping[str, str] | None, now: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date)."""
    if not headers:
        return None
    lower = {k.lower(): v for k, v in headers.items()}
    raw_ms = lower.get("retry-after-ms")
    if raw_ms is not None:
        try:
            return max(0.0, float(raw_ms) / 1000.0)
        except ValueError:
            pass
    raw = lower.get("retry-after")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def backoff_delay(
    attempt: int,
    *,
    base: float,
    cap: float,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Seconds to sleep before retry number ``attempt + 1`` (``attempt`` counts from 0).

    A server's ``Retry-After`` (up to :data:`MAX_RETRY_AFTER_S`) is honoured as given;
    otherwise exponential backoff with "equal jitter": uniform in ``[d/2, d]`` with
    ``d = min(cap, base * 2**attempt)``, so concurrent clients spread out.
    """
    if retry_after is not None and 0 <= retry_after <= MAX_RETRY_AFTER_S:
        return retry_after
    d = min(cap, base * (2**attempt))
    return d / 2 + (rng or random).uniform(0, d / 2)


def price_for(model: str, price_per_1k: float | tuple[float, float] | None) -> tuple[float, float] | None:
    """(prompt, completion) USD per 1K tokens: the given price, the list price, or None."""
    if price_per_1k is None:
        return PRICES_PER_1K.get(model)
    if isinstance(price_per_1k, (int, float)):
        return (float(price_per_1k), float(price_per_1k))
    p, c = price_per_1k
    return (float(p), float(c))


def cost_usd(prompt_tokens: int, completion_tokens: int, price: tuple[float, float] | None) -> float | None:
    if price is None:
        return None
    return (prompt_tokens * price[0] + completion_tokens * price[1]) / 1000.0

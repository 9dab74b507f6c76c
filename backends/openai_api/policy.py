"""The ``openai`` backend: a black-box guide behind any OpenAI-compatible completions API.

Spec ``openai:MODEL`` (everything after the first colon is the model, so fine-tuned names
like ``openai:ft:davinci-002:org::id`` work). It talks to ``POST {base_url}/completions``
through the official ``openai`` SDK; the base URL is ``base_url=``, else
``$OPENAI_BASE_URL``, else ``https://api.openai.com/v1`` (``rlgf serve`` and vLLM work too).

Key policy. The key comes from ``api_key=`` or ``$OPENAI_API_KEY``. With neither, talking
to ``api.openai.com`` is an error that says how to set the key; any other server gets a
placeholder key (local servers such as ``rlgf serve`` without ``--api-key`` or vLLM accept
anything, and one that wants a key answers 401, reported with the same hint). The key is
only handed to the SDK client: it never appears in ``repr``, ``describe()``, ``stats()``,
log lines, error messages (server messages are redacted) or the cache.

Robustness. The SDK's own retries are off; :meth:`OpenAIPolicy.complete` sends a batch as
requests of ``prompts_per_request`` prompts on at most ``max_concurrency`` threads, each
with a ``timeout``, retried up to ``max_retries`` times with exponential backoff and jitter
on 408/409/429 (honouring ``Retry-After``), 5xx, timeouts, dropped connections and
malformed replies. Other errors, and the last failure, become :class:`RlgfError`.

What the API cannot do: beam search (``can_beam_search = False``; asking raises),
``top_k`` and ``min_new_tokens`` (dropped: OpenAI rejects unknown fields; a short
completion can come back). With ``extensions=True`` (``"on"``) both are sent as the ``top_k``
and ``min_tokens`` fields that vLLM, llama.cpp, SGLang and ``rlgf serve`` understand;
``"auto"`` reads who serves the model from ``GET /v1/models`` (:data:`EXTENSION_SERVERS`). Sampled requests always carry their
``temperature`` and ``top_p``, so a server's own generation defaults cannot change them.

Caching and sampling. Every completion is stored (see :mod:`backends.openai_api.completion_cache`).
Greedy requests use sample index 0. With sampling, the k-th time this policy object is
asked the same (prompt, length, decoding) it uses sample index k, so within a run repeated
prompts get fresh samples while a re-run of the same calls in the same order is served
entirely from the cache. With ``seed=``, sampled requests carry a per-request seed derived
from it (servers that honour ``seed`` then reproduce a run even with a cold cache) and the
seed is part of the cache key, so runs with different seeds get different samples.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

from backends.base import SAMPLING_OPTIONS, Policy, RunSettings, Sampling
from backends.cache import cache_dir
from backends.openai_api.completion_cache import CompletionCache, cache_key, server_fingerprint
from backends.errors import RlgfError
from backends.openai_api.payload import cost_usd, create_payload, price_for, sampling_params
from backends.openai_api.transport import PLACEHOLDER_KEY, Transport, resolve_connection
from backends.openai_api.token_budget import GuideBudgetExhausted, TokenBudget, token_counter

__all__ = ["OpenAIPolicy", "GuideBudgetExhausted", "TokenBudget"]

log = logging.getLogger(__name__)

_MAX_CALIBRATION = 8.0
#: ``owned_by`` values of servers that take ``top_k`` and ``min_tokens`` (``--guide-extensions auto``)
EXTENSION_SERVERS = frozenset({"vllm", "sglang", "llamacpp", "llama.cpp", "rlgf"})


class OpenAIPolicy(Policy):
    """A guide policy served by an OpenAI-compatible completions endpoint."""

    backend = "openai"
    needs_key = True
    key_env_var = "OPENAI_API_KEY"
    remote = True
    trainable = False
    can_beam_search = False

    def __init__(
        self,
        spec: str,
        *,
        model: str | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_concurrency: int = 8,
        max_retries: int = 6,
        cache_path: str | os.PathLike | bool | None = None,
        budget: TokenBudget | int | None = None,
        price_per_1k: float | tuple[float, float] | None = None,
        prompts_per_request: int = 1,
        extensions: bool | str = False,
        seed: int | None = None,
        backoff_base: float = 1.0,
        backoff_cap: float = 60.0,
    ) -> None:
        super().__init__(spec)
        if model is None:
            model = spec.split(":", 1)[1] if spec.startswith("openai:") else spec
        if not model.strip():
            raise RlgfError(f"no model name in {spec!r}", hint="write it as openai:MODEL, e.g. openai:davinci-002")
        self.model = model
        self.base_url, self.endpoint, key, self._key_source = resolve_connection(base_url, api_key, self.key_env_var)
        _check_positive(timeout=timeout, max_concurrency=max_concurrency, prompts_per_request=prompts_per_request)
        if max_retries is None or max_retries < 0:
            raise RlgfError(f"openai backend: max_retries must be >= 0, got {max_retries!r}")
        self.timeout = float(timeout)
        self.max_concurrency = int(max_concurrency)
        self.prompts_per_request = int(prompts_per_request)
        self._extensions = extensions_setting(extensions)  # None: probe the server on first need
        self._cards: dict | None = None  # GET /v1/models, by id (fetched on first need)
        self.seed = seed
        self.price = price_for(model, price_per_1k)
        self.budget = TokenBudget(budget) if isinstance(budget, int) else budget
        self._count, self.token_count_source = token_counter(model)
        self._ratio = 1.0  # calibration: server prompt tokens / our raw estimate (largest seen)
        # a model tiktoken does not know (a local server's) may count far more tokens than our
        # estimate; until its usage calibrates the estimate, assume the worst (see _estimate)
        self._calibrated = _tiktoken_knows(model)
        self._lock = threading.Lock()
        self._occurrences: dict[str, int] = {}
        self._stats = dict.fromkeys(
            ("calls", "completions", "api_completions", "cache_hits", "prompt_tokens", "completion_tokens"), 0
        )
        self._cost = 0.0
        if cache_path is False:
            self.cache = None
        else:
            path = Path(cache_path) if cache_path not in (None, True) else cache_dir("openai") / "completions.sqlite"
            self.cache = CompletionCache(path)
        self._pool: ThreadPoolExecutor | None = None
        import openai

        client = openai.OpenAI(
            api_key=key or PLACEHOLDER_KEY, base_url=self.base_url, timeout=self.timeout, max_retries=0
        )
        self._transport = Transport(
            client,
            model=model,
            base_url=self.base_url,
            endpoint=self.endpoint,
            timeout=self.timeout,
            max_retries=int(max_retries),
            backoff_base=float(backoff_base),
            backoff_cap=float(backoff_cap),
            secrets=[key] if key else [],
            key_env_var=self.key_env_var,
            budget=self.budget,
        )

    @classmethod
    def from_spec(cls, arg: str, *, spec: str | None = None, device=None, **kwargs) -> "OpenAIPolicy":
        """Registry entry: ``arg`` is the model (after ``openai:``); ``device`` is ignored."""
        return cls(spec or f"openai:{arg}", model=arg, **kwargs)

    @classmethod
    def preflight(cls, options: dict[str, Any]) -> None:
        """The base URL and the key, as the constructor will resolve them (no request)."""
        resolve_connection(options.get("base_url"), options.get("api_key"), cls.key_env_var)

    @classmethod
    def options_from(cls, settings: RunSettings) -> dict[str, Any]:
        """Constructor options from a run's settings (the key only ever comes from the
        environment). ``budget_used`` tokens count against ``budget_tokens``; the transport
        settings come from ``$RLGF_GUIDE_*`` (:data:`GUIDE_ENV`), for a guide and for the policy
        ``eval`` or ``difficulty`` scores alike."""
        opts: dict[str, Any] = {}
        if settings.base_url:
            opts["base_url"] = settings.base_url
        if settings.budget_tokens:
            budget = TokenBudget(settings.budget_tokens)
            if settings.budget_used:
                budget.charge(int(settings.budget_used))
            opts["budget"] = budget
        if settings.price_per_1k is not None:
            opts["price_per_1k"] = settings.price_per_1k
        if settings.seed is not None:
            opts["seed"] = settings.seed
        if settings.max_concurrency is not None:
            opts["max_concurrency"] = settings.max_concurrency
        if settings.prompts_per_request is not None:
            opts["prompts_per_request"] = settings.prompts_per_request
        if settings.extensions is not None:
            opts["extensions"] = settings.extensions
        opts.update(guide_env_options())
        return opts

    @property
    def extensions(self) -> bool:
        """Whether requests carry ``top_k`` and ``min_tokens`` (probed once under ``auto``)."""
        if self._extensions is None:
            self._extensions = self._probe_extensions()
        return self._extensions

    def _probe_extensions(self) -> bool:
        """Does the server take ``top_k`` and ``min_tokens``? Read from who serves the model in
        ``GET /v1/models`` (``owned_by``: vLLM, SGLang, llama.cpp and ``rlgf serve`` say so and take
        them); OpenAI, and any server not known to, get neither (OpenAI refuses unknown fields)."""
        if self._on_openai():
            return False
        card = self._card()
        owner = str((card or {}).get("owned_by") or "")
        found = owner.strip().lower() in EXTENSION_SERVERS
        log.info("%s: served by %r: top_k/min_tokens %s", self.describe(), owner, "sent" if found else "not sent")
        return found

    def _on_openai(self) -> bool:
        return self.endpoint.split("/")[0].split(":")[0] == "api.openai.com"

    def _card(self) -> dict | None:
        """This model's entry in ``GET /v1/models`` (listed once; None where the server cannot list)."""
        if self._cards is None:
            try:
                self._cards = {c.id: c.model_dump() for c in self._transport.client.models.list(timeout=self.timeout).data}
            except self._transport._oa.APIError as exc:
                log.info("%s: cannot list models (%s)", self.describe(), exc)
                self._cards = {}
        return self._cards.get(self.model)

    @property
    def server_model(self) -> str | None:
        """What the server runs under :attr:`model`, as a digest (:func:`server_fingerprint`): part
        of the cache key where the server says (vLLM, SGLang, llama.cpp, ``rlgf serve``); None for
        OpenAI and servers that do not, whose keys stay as they were."""
        return None if self._on_openai() else server_fingerprint(self._card())

    @property
    def sampling_options(self) -> frozenset[str]:
        """OpenAI takes no ``top_k`` and no minimum length; with ``extensions`` both are sent."""
        return SAMPLING_OPTIONS if self.extensions else frozenset({"temperature", "top_p"})

    # -- public ---------------------------------------------------------------
    @property
    def max_retries(self) -> int:
        return self._transport.max_retries

    def describe(self) -> str:
        return f"openai:{self.model} at {self.endpoint}"

    def __repr__(self) -> str:
        key = f"key from {self._key_source}" if self._key_source else "no key"
        return f"OpenAIPolicy(model={self.model!r}, base_url={self.base_url!r}, {key})"

    def stats(self) -> dict[str, Any]:
        """Counters since construction, as a flat dict.

        ``requests`` (HTTP attempts), ``retries``, ``calls`` (successful requests),
        ``completions`` (returned), ``cache_hits`` (returned from the cache),
        ``api_completions`` (generated by the server), ``prompt_tokens`` /
        ``completion_tokens`` / ``total_tokens`` (server-reported usage, else our estimate),
        ``possibly_billed_tokens`` (estimates of requests whose reply was lost), ``cost_usd``
        (None without a price), ``token_count_source``, and ``budget_*`` with a budget.
        """
        with self._lock:
            out: dict[str, Any] = dict(self._stats)
            cost = self._cost
        out.update(self._transport.counts)
        out["total_tokens"] = out["prompt_tokens"] + out["completion_tokens"]
        out["cost_usd"] = round(cost, 6) if self.price else None
        out["token_count_source"] = self.token_count_source
        if self.budget is not None:
            out.update(self.budget.as_dict())
        return out

    def count_tokens(self, text: str) -> int:
        """Our pre-call estimate of ``text``'s prompt tokens (tiktoken when available offline)."""
        return self._count(text)

    def list_models(self) -> list[str]:
        """Model ids the server offers (``GET /v1/models``)."""
        return self._transport.list_models()

    def validate(self) -> None:
        """Check the server offers :attr:`model`; raises RlgfError listing what it offers."""
        models = self.list_models()
        if self.model not in models:
            raise self._transport.unknown_model(models)

    def complete(
        self,
        prompts: Sequence[str],
        *,
        max_new_tokens: int,
        min_new_tokens: int = 0,
        sampling: Sampling = Sampling(),
    ) -> list[str]:
        """One completion per prompt, from the cache where possible.

        Raises :class:`GuideBudgetExhausted` *before sending anything* when the uncached part
        of the batch could pass the budget (estimated prompt tokens + ``max_new_tokens`` each).
        """
        params = {**sampling_params(sampling, extensions=self.extensions), **self._key_extras()}
        if self.seed is not None and not sampling.is_greedy:
            params["run_seed"] = int(self.seed)  # other seeds, other samples (cache key only)
        if self.extensions and min_new_tokens > 0:
            params["min_tokens"] = int(min(min_new_tokens, max_new_tokens))
        prompts = list(prompts)
        if not prompts:
            return []
        if max_new_tokens <= 0:
            return [""] * len(prompts)
        if fingerprint := self.server_model:
            params["server_model"] = fingerprint  # other weights, other completions (cache key only)
        keyed = self._keys(prompts, max_new_tokens, params, sampling.is_greedy)
        keys = [k for k, _ in keyed]
        found = self.cache.get_many(keys) if self.cache is not None else {}
        pending: dict[str, tuple[str, int]] = {}
        for (key, idx), prompt in zip(keyed, prompts):
            if key not in found and key not in pending:
                pending[key] = (prompt, idx)
        hits = sum(k in found for k in keys)
        if pending:
            found.update(self._fetch(pending, max_new_tokens, params, sampling, min_new_tokens))
        with self._lock:  # counted once returned: a batch refused by the budget returns nothing
            self._stats["completions"] += len(prompts)
            self._stats["cache_hits"] += hits
        return [found[k][0] for k in keys]

    # -- hooks of the chat backend ------------------------------------------------
    #: requests go to ``/chat/completions`` (see :mod:`backends.openai_api.chat_policy`)
    chat = False

    def _key_extras(self) -> dict[str, Any]:
        """Request settings beyond decoding that change the reply (part of the cache key)."""
        return {}

    def _payload(self, prompts: list[str], max_tokens: int, sampling: Sampling, params: dict) -> dict[str, Any]:
        return create_payload(self.model, prompts, max_tokens=max_tokens, sampling=sampling,
                              min_tokens=params.get("min_tokens", 0), extensions=self.extensions)

    def _texts(self, texts: list[str], prompts: list[str]) -> list[str]:
        return texts

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self._transport.client.close()
        if self.cache is not None:
            self.cache.close()

    def __enter__(self) -> "OpenAIPolicy":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- batching -------------------------------------------------------------
    def _keys(self, prompts: list[str], max_tokens: int, params: dict, greedy: bool) -> list[tuple[str, int]]:
        """(cache key, sample index) per prompt; advances the per-prompt sample counters."""
        keyed = []
        with self._lock:
            for p in prompts:
                idx = 0
                if not greedy:
                    base = cache_key(self.model, self.endpoint, p, max_tokens, params, -1)
                    idx = self._occurrences.get(base, 0)
                    self._occurrences[base] = idx + 1
                keyed.append((cache_key(self.model, self.endpoint, p, max_tokens, params, idx), idx))
        return keyed

    def _fetch(self, pending: dict[str, tuple[str, int]], max_tokens: int, params: dict,
               sampling: Sampling, min_tokens: int) -> dict[str, tuple[str, str | None]]:
        items = list(pending.items())
        size = self.prompts_per_request
        chunks = [items[i : i + size] for i in range(0, len(items), size)]
        ests = [self._estimate([p for _, (p, _) in c], max_tokens) for c in chunks]
        if self.budget is not None:
            self.budget.reserve(sum(e[0] for e in ests), what=f"{len(items)} uncached guide completions")

        def run(i: int) -> dict[str, tuple[str, str | None]]:
            return self._run_chunk(chunks[i], ests[i], max_tokens, params, sampling, min_tokens)

        results: dict[str, tuple[str, str | None]] = {}
        if len(chunks) == 1:
            results.update(run(0))
            return results
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.max_concurrency, thread_name_prefix="rlgf-openai")
        futures = [self._pool.submit(run, i) for i in range(len(chunks))]
        error: BaseException | None = None
        for fut in futures:  # wait for every chunk: finished ones are cached either way
            try:
                results.update(fut.result())
            except BaseException as exc:  # noqa: BLE001 - re-raised below
                if error is None or (isinstance(error, GuideBudgetExhausted) and not isinstance(exc, GuideBudgetExhausted)):
                    error = exc
        if error is not None:
            raise error
        return results

    def _estimate(self, prompts: list[str], max_tokens: int) -> tuple[int, int]:
        """(tokens to reserve, raw prompt-token estimate) for one request.

        Before a server with an unknown tokenizer has reported any usage, a prompt is
        reserved as one token per UTF-8 byte plus one (a BOS): no byte-level tokenizer
        counts more, so the first calls cannot overshoot the budget either.
        """
        raw = sum(self._count(p) for p in prompts)
        with self._lock:
            calibrated, ratio = self._calibrated, self._ratio
        prompt = math.ceil(raw * ratio) if calibrated else sum(len(p.encode("utf-8")) + 1 for p in prompts)
        return prompt + max_tokens * len(prompts), raw

    def _run_chunk(self, chunk, est, max_tokens, params, sampling, min_tokens):
        reserved, raw_prompt = est
        prompts = [p for _, (p, _) in chunk]
        settled = False
        try:
            payload = self._payload(prompts, max_tokens, sampling, params)
            if "run_seed" in params:  # a seed per request, so each sample index differs and replays
                digest = hashlib.sha256(f"{self.seed}:{','.join(k for k, _ in chunk)}".encode()).hexdigest()
                payload["seed"] = int(digest[:8], 16) & 0x7FFFFFFF
            parsed = self._transport.request(payload, len(prompts), reserved, chat=self.chat)
            p_tok = parsed.prompt_tokens if parsed.prompt_tokens is not None else math.ceil(raw_prompt * self._ratio)
            c_tok = parsed.completion_tokens
            if c_tok is None:
                c_tok = sum(self._count(t) for t in parsed.texts)
            with self._lock:
                if parsed.prompt_tokens is not None and raw_prompt > 0:
                    self._ratio = min(_MAX_CALIBRATION, max(self._ratio, parsed.prompt_tokens / raw_prompt))
                    self._calibrated = True
                self._stats["calls"] += 1
                self._stats["api_completions"] += len(prompts)
                self._stats["prompt_tokens"] += p_tok
                self._stats["completion_tokens"] += c_tok
                self._cost += cost_usd(p_tok, c_tok, self.price) or 0.0
            if self.budget is not None:
                self.budget.settle(reserved, p_tok + c_tok)
                settled = True
            rows = [
                dict(key=key, model=self.model, endpoint=self.endpoint, prompt=prompt, max_tokens=max_tokens,
                     params=params, sample_index=idx, text=text, finish_reason=reason)
                for (key, (prompt, idx)), text, reason in zip(chunk, self._texts(parsed.texts, prompts),
                                                              parsed.finish_reasons)
            ]
            if self.cache is not None:
                self.cache.put_many(rows)
            return {r["key"]: (r["text"], r["finish_reason"]) for r in rows}
        finally:
            if self.budget is not None and not settled:
                self.budget.release(reserved)


#: transport settings of an API policy (a guide, or the policy ``eval`` scores) that only the
#: environment sets (slow servers, tests)
GUIDE_ENV = {"RLGF_GUIDE_TIMEOUT": ("timeout", float), "RLGF_GUIDE_MAX_RETRIES": ("max_retries", int),
             "RLGF_GUIDE_BACKOFF": ("backoff_base", float)}


def guide_env_options() -> dict[str, Any]:
    """The :data:`GUIDE_ENV` settings present in the environment, checked: finite, >= 0, and the
    timeout > 0."""
    opts: dict[str, Any] = {}
    for var, (name, kind) in GUIDE_ENV.items():
        raw = os.environ.get(var, "").strip()
        if not raw:
            continue
        try:
            value = kind(raw)
        except ValueError:
            value = None
        least = "> 0" if name == "timeout" else ">= 0"
        if value is None or not math.isfinite(value) or value < 0 or (name == "timeout" and value == 0):
            raise RlgfError(f"${var} must be a finite {'whole ' if kind is int else ''}number {least}, not {raw!r}",
                            f"unset it, or e.g. {var}={'6' if kind is int else '30'}")
        opts[name] = value
    return opts


def _tiktoken_knows(model: str) -> bool:
    """Whether tiktoken maps ``model`` to an encoding (so our count is the server's)."""
    try:
        import tiktoken

        tiktoken.encoding_name_for_model(model)
        return True
    except Exception:  # noqa: BLE001 - unknown model (KeyError), or no tiktoken
        return False


def extensions_setting(value: bool | str | None) -> bool | None:
    if isinstance(value, bool):
        return value
    mode = str(value or "auto").strip().lower()
    if mode not in ("auto", "on", "off"):
        raise RlgfError(f"--guide-extensions {value!r} is not one of auto, on, off",
                        "auto asks the server once whether it takes top_k and min_tokens")
    return None if mode == "auto" else mode == "on"


def _check_positive(**values) -> None:
    for name, value in values.items():
        if value is None or value <= 0:
            raise RlgfError(f"openai backend: {name} must be > 0, got {value!r}")

"""What ``rlgf serve`` answers, whatever HTTP stack carries it.

:class:`Service` holds the policy, its batcher (:mod:`rlgf_cli.serving.batcher`), the key,
the served name and the counters, and turns a decoded request into a reply body or an
:class:`~rlgf_cli.serving.contract.ApiError`. The production stack
(:mod:`rlgf_cli.serving.asgi`, uvicorn + Starlette) and the standard-library one
(:mod:`rlgf_cli.serving.server`, what the tests' fault-injecting servers extend) both call it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hmac
import logging
import threading
import time
from typing import Any, Callable

from backends.base import Policy
from backends.errors import RlgfError
from backends.hf.util import without_prefix
from backends.precision import autocast_of

from rlgf_cli.serving.batcher import Batcher, ClientGone
from rlgf_cli.serving.chat_contract import build_chat_reply, parse_chat_request
from rlgf_cli.serving.chat_contract import render as render_chat
from rlgf_cli.serving.contract import ApiError, CompletionRequest, build_reply, parse_completion_request
from rlgf_cli.serving.logprobs import choice_logprobs

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 8 * 1024 * 1024
POST_ROUTES = ("/v1/completions", "/v1/chat/completions")


def token_counter_for(policy: Policy) -> Callable[[str], int]:
    """Count tokens as the policy does: its ``count_tokens``, its HF tokenizer, else offline tiktoken."""
    count = getattr(policy, "count_tokens", None)
    if callable(count):
        return count
    tok = getattr(policy, "tokenizer", None)
    if tok is not None:

        def count_hf(text: str) -> int:
            return len(tok(text, add_special_tokens=False)["input_ids"])

        try:
            count_hf("probe")
            return count_hf
        except Exception:  # noqa: BLE001 - not an HF tokenizer: fall through
            pass
    from backends.openai_api.token_budget import token_counter

    return token_counter()[0]


def weights_digest(policy: Policy) -> str | None:
    """A digest of a local model's weights as served (names, dtypes, shapes and float64 sums of
    every tensor: one pass over them), or None for a policy without a local model. Clients put
    it in their cache keys (``server_fingerprint``), so other weights behind the same name and
    port never answer from an old cache."""
    import hashlib

    import torch

    model = getattr(policy, "model", None)
    if not isinstance(model, torch.nn.Module):
        return None
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, t in model.state_dict().items():
            digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}:".encode())
            if t.numel():
                digest.update(repr((float(t.sum(dtype=torch.float64)), float(t.abs().sum(dtype=torch.float64)))).encode())
    return digest.hexdigest()[:16]


class Service:
    """The served policy and everything a request needs (see the module docstring)."""

    def __init__(self, policy: Policy, *, api_key: str | None = None, model_name: str | None = None, precision=None,
                 max_batch: int = 64, batch_window_s: float = 0.005) -> None:
        self.policy = policy
        self.api_key = api_key or None
        self.model_name = model_name or policy.spec
        self.precision = precision
        self.model_lock = threading.Lock()
        self.count_tokens = token_counter_for(policy)
        self.batcher = Batcher(policy, max_batch=max_batch, window_s=batch_window_s, lock=self.model_lock,
                               precision=precision)
        self.created = int(time.time())
        self._counts_lock = threading.Lock()
        self.counts = dict.fromkeys(
            ("requests", "completion_requests", "completions", "prompt_tokens", "completion_tokens", "errors",
             "dropped"), 0)
        self._flight = threading.Condition()
        self._flying = 0

    def bump(self, **by: int) -> None:
        with self._counts_lock:
            for name, value in by.items():
                self.counts[name] += value

    @contextlib.contextmanager
    def answering(self):
        """Counts a request being answered, so a shutdown can wait for it (:meth:`drain`)."""
        with self._flight:
            self._flying += 1
        try:
            yield
        finally:
            with self._flight:
                self._flying -= 1
                self._flight.notify_all()

    def drain(self, timeout: float = 60.0) -> bool:
        """Wait until no request is being answered (at most ``timeout`` s); True if none is left."""
        deadline = time.monotonic() + timeout
        with self._flight:
            while self._flying and time.monotonic() < deadline:
                self._flight.wait(max(0.0, min(0.5, deadline - time.monotonic())))
            return self._flying == 0

    def close(self, timeout: float | None = 30.0) -> None:
        """Stop the batcher, waiting at most ``timeout`` s for the batch it is decoding."""
        self.batcher.close(timeout)

    # -- auth and routes ------------------------------------------------------------
    def authorized(self, header: str | None) -> bool:
        if self.api_key is None:
            return True
        scheme, _, token = (header or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.api_key.encode())

    @staticmethod
    def auth_error(header: str | None) -> ApiError:
        msg = "Incorrect API key provided." if header else "You didn't provide an API key (Authorization: Bearer KEY)."
        return ApiError(401, msg, code="invalid_api_key")

    def get(self, path: str) -> dict:
        """The body of ``GET path`` (auth is the caller's: ``/health`` needs none)."""
        if path == "/health":
            return {"status": "ok", "model": self.model_name}
        if path == "/v1/models":
            return {"object": "list", "data": [self.model_card()]}
        if path.startswith("/v1/models/"):
            name = path[len("/v1/models/"):]
            if name == self.model_name:
                return self.model_card()
            raise self.unknown_model(name)
        raise ApiError(404, f"no route GET {path}", type_="not_found_error")

    def post(self, path: str, payload: Any, gone: Callable[[], bool] | None = None) -> dict:
        """The body of ``POST path`` with the decoded JSON ``payload`` (blocks while it decodes;
        ``gone``, a check that the client has left, drops the request while it waits)."""
        if path not in POST_ROUTES:
            raise ApiError(404, f"no route POST {path}", type_="not_found_error")
        chat = path == "/v1/chat/completions"
        req = parse_chat_request(payload) if chat else parse_completion_request(payload)
        if req.model != self.model_name:
            raise self.unknown_model(req.model)
        return self.chat(req, gone) if chat else self.complete(req, gone)

    @functools.cached_property
    def fingerprint(self) -> dict:
        """What the model card says the server runs (:func:`weights_digest`, at the first
        ``GET /v1/models`` rather than at start-up)."""
        return {"weights": weights_digest(self.policy), "precision": getattr(self.precision, "name", None) or "model's own"}

    def model_card(self) -> dict:
        return {"id": self.model_name, "object": "model", "created": self.created, "owned_by": "rlgf",
                "root": self.policy.spec, "rlgf": self.fingerprint}

    def unknown_model(self, name: str) -> ApiError:
        return ApiError(404, f"The model '{name}' does not exist; this server offers '{self.model_name}'.",
                        param="model", code="model_not_found")

    # -- work -------------------------------------------------------------------------
    def chat(self, req, gone: Callable[[], bool] | None = None) -> dict:
        """A chat request: the conversation rendered with the model's template, then decoded
        like a completions prompt (in the same batches)."""
        prompt = render_chat(self.policy, req)
        completion = req.completion
        if not req.max_tokens_given:  # the default length must not overflow a short context
            room = self._context_room(prompt)
            if room is not None and room < completion.max_tokens:
                completion = dataclasses.replace(completion, max_tokens=max(room, 1))
                req = dataclasses.replace(req, completion=completion)
        texts = self._decode([prompt] * completion.n, completion, gone)
        body = build_chat_reply(req, prompt, texts, self.count_tokens, self.model_name)
        self._count(body, len(texts))
        return body

    def complete(self, req: CompletionRequest, gone: Callable[[], bool] | None = None) -> dict:
        expanded = [p for p in req.prompts for _ in range(req.n)]
        texts = self._decode(expanded, req, gone)
        body = build_reply(req, texts, self.count_tokens, self.model_name)
        if req.logprobs is not None:
            with self.model_lock, autocast_of(self.precision):  # the frozen weights are bf16 under bf16
                for i, choice in enumerate(body["choices"]):
                    prompt = req.prompts[i // req.n]
                    completion = choice["text"][len(prompt):] if req.echo else choice["text"]
                    # score the sampled tokens themselves, unless a stop sequence cut the text
                    ids = getattr(texts[i], "token_ids", None) if completion == texts[i] else None
                    try:
                        choice["logprobs"] = choice_logprobs(self.policy, prompt, completion, echo=req.echo,
                                                             top=req.logprobs, completion_ids=ids)
                    except ApiError:
                        raise
                    except Exception as exc:  # noqa: BLE001 - as in _decode: a JSON error, not a dropped reply
                        log.exception("the policy failed to score a completion")
                        raise ApiError(500, f"the policy failed to score the completion: {type(exc).__name__}: {exc}",
                                       type_="server_error") from None
        self._count(body, len(texts))
        return body

    def _count(self, body: dict, completions: int) -> None:
        usage = body["usage"]
        self.bump(completion_requests=1, completions=completions, prompt_tokens=usage["prompt_tokens"],
                  completion_tokens=usage["completion_tokens"])

    def _check_context(self, prompts: list[str], max_tokens: int) -> None:
        """400 before decoding when a prompt and ``max_tokens`` overflow the model's positions
        (decoding past them fails inside the model: an index error on CPU, a device assert
        that poisons the whole CUDA context on a GPU)."""
        limit = self._context_limit()
        if limit is None:
            return
        for prompt in dict.fromkeys(prompts):
            used = limit - self._context_room(prompt)
            if used + max_tokens > limit:
                raise ApiError(400, f"This model's maximum context length is {limit} tokens; the prompt takes {used} "
                                    f"and max_tokens asks for {max_tokens} more. Shorten the prompt or lower max_tokens.",
                               param="max_tokens", code="context_length_exceeded")

    def _context_limit(self) -> int | None:
        """The causal model's positions (None: a seq2seq model, or no limit known)."""
        positions = getattr(self.policy, "_max_positions", None)
        if positions is None or getattr(self.policy, "is_seq2seq", False):
            return None
        return positions() or None

    def _context_room(self, prompt: str) -> int | None:
        """How many tokens the context has left after ``prompt`` (with the policy's BOS)."""
        limit = self._context_limit()
        if limit is None:
            return None
        prefix = list(getattr(self.policy, "_prefix_ids", []) or [])
        tokenizer = getattr(self.policy, "tokenizer", None)
        if prefix and tokenizer is not None:  # a prompt that writes its own BOS gets no second one
            body = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
            return limit - len(prefix) - len(without_prefix(body, prefix))
        return limit - len(prefix) - self.count_tokens(prompt)

    def _decode(self, expanded: list[str], req: CompletionRequest, gone: Callable[[], bool] | None = None) -> list[str]:
        self._check_context(expanded, req.max_tokens)
        try:
            texts = self.batcher.submit(
                expanded, max_new_tokens=req.max_tokens, min_new_tokens=min(req.min_tokens, req.max_tokens),
                sampling=req.sampling(), seed=req.seed, gone=gone,
            ) if req.max_tokens > 0 else [""] * len(expanded)
        except ClientGone:
            self.bump(dropped=1)
            raise ApiError(499, "the client closed the request before it was decoded") from None
        except RlgfError as exc:
            raise ApiError(400, f"the policy refused the request: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - a policy bug must not kill the server
            log.exception("the policy failed on a completion request")
            raise ApiError(500, f"the policy failed: {type(exc).__name__}: {exc}", type_="server_error") from None
        if len(texts) != len(expanded):
            raise ApiError(500, "the policy returned the wrong number of completions", type_="server_error")
        return texts

"""One completions request with explicit retries, and the errors users see for failures.

The SDK client is built with ``max_retries=0``; :meth:`Transport.request` retries itself so
the behaviour is visible and testable:

* retried: HTTP 408, 409, 429 (``Retry-After`` / ``retry-after-ms`` honoured) and 5xx,
  timeouts, dropped connections, and 200 replies that are not a completion;
* not retried: 429 ``insufficient_quota``, 401/403 (key), 404 (unknown model: the error
  lists ``GET /v1/models``), other 4xx — each an :class:`RlgfError`;
* after ``max_retries`` retries the last failure becomes an :class:`RlgfError`.

A request whose reply was lost after it was sent (timeout, dropped connection, malformed
200) may have been billed: its estimate is charged to the budget, and the retry goes out
only while the budget still holds it (else :class:`GuideBudgetExhausted`).

Server messages are redacted (the key, and anything shaped like ``sk-…``) before they reach
an error message or a log line.
"""

from __future__ import annotations

import logging
import os
import random
import re
import threading
import time
import urllib.parse
from typing import Any

from backends.openai_api.completion_cache import endpoint_of
from backends.errors import RlgfError, did_you_mean
from backends.openai_api.payload import MalformedResponse, ParsedCompletion, backoff_delay, parse_completion, parse_retry_after
from backends.openai_api.token_budget import GuideBudgetExhausted, TokenBudget

log = logging.getLogger("backends.openai_api.policy")

DEFAULT_BASE_URL = "https://api.openai.com/v1"
#: sent when a non-OpenAI server is used without a key (never a real credential)
PLACEHOLDER_KEY = "rlgf-no-key"
_KEY_LIKE = re.compile(r"sk-[A-Za-z0-9_\-*.]{3,}")
RETRY_STATUSES = (408, 409, 429)


def resolve_connection(base_url: str | None, api_key: str | None, key_env_var: str) -> tuple[str, str, str | None, str | None]:
    """``(base_url, endpoint, key, key_source)`` from the arguments, else the environment.

    No key is an error only for ``api.openai.com``; other servers get :data:`PLACEHOLDER_KEY`
    from the caller (``key`` is then None). ``key_source`` names where the key came from,
    never the key.
    """
    url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
    try:
        parsed = urllib.parse.urlsplit(url)
        parsed.port  # noqa: B018  (raises on a port that is not a number or out of range)
    except ValueError as exc:
        raise RlgfError(f"the OpenAI base URL {url!r} is not a valid URL ({exc})",
                        hint="e.g. http://127.0.0.1:8000/v1 (OPENAI_BASE_URL works too)") from None
    if not re.match(r"^https?://[^/]+", url) or not parsed.hostname:
        raise RlgfError(
            f"the OpenAI base URL {url!r} is not an http(s) URL",
            hint="e.g. http://127.0.0.1:8000/v1 (OPENAI_BASE_URL works too)",
        )
    endpoint = endpoint_of(url)
    key = api_key or os.environ.get(key_env_var) or None
    source = "argument" if api_key else (f"${key_env_var}" if key else None)
    if key is None and endpoint.split("/")[0].split(":")[0] == "api.openai.com":
        raise RlgfError(
            f"the openai backend needs an API key and {key_env_var} is not set",
            hint=f"export {key_env_var}=sk-... (read from the environment, never stored), "
            "or point OPENAI_BASE_URL at a local OpenAI-compatible server such as `rlgf serve`",
        )
    return url, endpoint, key, source


#: httpx timeouts raised before the request was sent (a connect or a pooled connection)
UNSENT_TIMEOUTS = ("ConnectTimeout", "PoolTimeout")


class Transport:
    """Sends completion requests for one model at one endpoint."""

    def __init__(
        self,
        client,
        *,
        model: str,
        base_url: str,
        endpoint: str,
        timeout: float,
        max_retries: int,
        backoff_base: float,
        backoff_cap: float,
        secrets: list[str],
        key_env_var: str,
        budget: TokenBudget | None,
    ) -> None:
        import openai

        self._oa = openai
        self.client = client
        self.model = model
        self.base_url = base_url
        self.endpoint = endpoint
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.key_env_var = key_env_var
        self.budget = budget
        self._secrets = [s for s in secrets if s]
        self._rng = random.Random()
        self._lock = threading.Lock()
        self.counts = {"requests": 0, "retries": 0, "possibly_billed_tokens": 0}

    def _bump(self, name: str, by: int = 1) -> None:
        with self._lock:
            self.counts[name] += by

    def request(self, payload: dict[str, Any], n_prompts: int, estimate: int, *, chat: bool = False) -> ParsedCompletion:
        """Send ``payload`` until a well-formed completion of ``n_prompts`` prompts comes back
        (``chat``: to ``/chat/completions``, one conversation a request)."""
        from backends.openai_api.chat import parse_chat

        oa = self._oa
        api = self.client.chat.completions if chat else self.client.completions
        last = "no attempt"
        for attempt in range(self.max_retries + 1):
            retry_after = None
            lost = False  # sent, but the reply is gone: the server may have done (and billed) the work
            self._bump("requests")
            try:
                raw = api.with_raw_response.create(**payload, timeout=self.timeout)
                return parse_chat(raw.content, n_prompts) if chat else parse_completion(raw.content, n_prompts)
            except MalformedResponse as exc:
                last, lost = f"malformed reply ({self.redact(str(exc))})", True
            except oa.APITimeoutError as exc:
                cause = type(exc.__cause__).__name__ if exc.__cause__ is not None else ""
                if cause in UNSENT_TIMEOUTS:  # no connection was made: nothing reached the server
                    last, lost = f"could not connect within {self.timeout:g} s ({cause})", False
                else:
                    last, lost = f"no reply within {self.timeout:g} s", True
            except oa.APIConnectionError as exc:
                cause = exc.__cause__
                name = type(cause).__name__ if cause is not None else "error"
                lost = name != "ConnectError"
                last = f"connection failed ({name}: {self.redact(str(cause or exc))})"
            except oa.APIStatusError as exc:
                status = exc.status_code
                if status == 429 and self.error_code(exc) == "insufficient_quota":
                    raise RlgfError(
                        f"the API at {self.endpoint} refused: quota exhausted (HTTP 429 insufficient_quota)",
                        hint="check the account's billing and limits",
                    ) from None
                if status not in RETRY_STATUSES and status < 500:
                    raise self.status_error(exc) from None
                retry_after = parse_retry_after(exc.response.headers)
                last = f"HTTP {status} ({self.redact(exc.message)})"
            if lost:
                self._bump("possibly_billed_tokens", estimate)
                if self.budget is not None:
                    self.budget.charge(estimate)
            if attempt == self.max_retries:
                break
            if self.budget is not None and self.budget.used + self.budget.reserved > self.budget.max_tokens:
                self.budget.exhausted = True
                raise GuideBudgetExhausted(
                    f"guide token budget exhausted while retrying ({last}); lost attempts may have been billed",
                    hint="raise the guide budget, or continue without the guide",
                )
            delay = backoff_delay(
                attempt, base=self.backoff_base, cap=self.backoff_cap, retry_after=retry_after, rng=self._rng
            )
            log.info("guide request failed (%s); retry %d/%d in %.2f s", last, attempt + 1, self.max_retries, delay)
            self._bump("retries")
            time.sleep(delay)
        tries = self.max_retries + 1
        raise RlgfError(f"the API at {self.endpoint} failed {tries} time{'s' if tries > 1 else ''}; last: {last}",
                        hint=self.failure_hint(last))

    def failure_hint(self, last: str) -> str:
        """What to do about a request that failed every try, by how the last try failed."""
        if last.startswith("no reply within"):  # connected, then waited: a slow server, not a missing one
            return (f"the server answers too slowly: raise RLGF_GUIDE_TIMEOUT (now {self.timeout:g} s) or "
                    "RLGF_GUIDE_MAX_RETRIES, or send less at once (--guide-concurrency, --guide-prompts-per-request)")
        if last.startswith(("HTTP", "malformed")):
            return "the server is up but keeps failing: check its log; RLGF_GUIDE_MAX_RETRIES sets the retries"
        return ("check that the server is up and the base URL is right (--guide-base-url, "
                "--policy-base-url or $OPENAI_BASE_URL)")

    # -- models -----------------------------------------------------------------
    def list_models(self) -> list[str]:
        try:
            return sorted(m.id for m in self.client.models.list(timeout=self.timeout))
        except self._oa.AuthenticationError as exc:  # the same message as a refused completion
            raise self.status_error(exc) from None
        except self._oa.APIError as exc:
            raise RlgfError(
                f"cannot list the models at {self.endpoint}: {self.redact(str(exc))}",
                hint="check the base URL (--guide-base-url, --policy-base-url or $OPENAI_BASE_URL; it usually ends "
                     "in /v1) and the key",
            ) from None

    def unknown_model(self, models: list[str]) -> RlgfError:
        shown = ", ".join(models[:30]) + (f", … ({len(models)} in all)" if len(models) > 30 else "")
        hint = did_you_mean(self.model, models) + f"the server offers: {shown or 'no models'}"
        return RlgfError(f"the server at {self.endpoint} has no model {self.model!r}", hint=hint)

    # -- errors -------------------------------------------------------------------
    def redact(self, text: str) -> str:
        for secret in self._secrets:
            if len(secret) >= 12:
                text = text.replace(secret, "***")
            else:  # a local server's short key ("x", "none") only where it stands alone, not in every
                text = re.sub(rf"(?<![\w-]){re.escape(secret)}(?![\w-])", "***", text)  # word ("E***pecting")
        return _KEY_LIKE.sub("sk-***", text)

    @staticmethod
    def error_code(exc) -> str | None:
        body = exc.body
        if isinstance(body, dict):
            err = body.get("error", body)
            if isinstance(err, dict):
                return err.get("code") or err.get("type")
        return None

    def status_error(self, exc) -> RlgfError:
        status = exc.status_code
        msg = self.redact(exc.message)
        if status in (401, 403):
            return RlgfError(
                f"the server at {self.endpoint} rejected the API key (HTTP {status})",
                hint=f"set {self.key_env_var} to a valid key (for `rlgf serve`, the key given to --api-key)",
            )
        if status == 404:
            try:
                models = self.list_models()
            except RlgfError as inner:
                return RlgfError(f"{self.base_url}/completions answered 404 ({msg})", hint=inner.hint)
            if self.model not in models:
                return self.unknown_model(models)
            return RlgfError(
                f"{self.base_url}/completions answered 404 although the server lists {self.model!r}",
                hint="does the server offer the legacy completions endpoint?",
            )
        return RlgfError(f"the API at {self.endpoint} refused the request (HTTP {status}): {msg}")

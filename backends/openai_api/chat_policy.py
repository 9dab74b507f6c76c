"""The ``openai-chat`` backend: a black-box guide behind any OpenAI-compatible chat API.

Spec ``openai-chat:MODEL``. It is the ``openai`` backend (:mod:`backends.openai_api.policy`)
with other request bodies: the same transport and retries, SQLite cache, token budget, cost
report and key handling, one conversation per request to ``POST {base_url}/chat/completions``.

A roll-in (``complete``) sends the task's prompt inside the roll-in instruction under the
system message and takes the reply as the prompt's continuation. A roll-out from the
learner's prefix (``continue_from``) sends that prefix as the final assistant message in the
server's prefill form (:mod:`backends.openai_api.chat`). ``prefill="auto"`` probes the server
once, on first need: the first of ``continue``, ``prefix``, ``trailing`` it accepts (a 400 or
422 is a refusal); ``api.openai.com`` continues no assistant message, so there it is ``none``.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

from backends.base import RunSettings, Sampling
from backends.errors import RlgfError
from backends.openai_api.chat import (DEFAULT_INSTRUCTION, DEFAULT_SYSTEM, PROBE_ORDER, chat_body, check_instruction,
                                      check_prefill, decode_request, encode_request, strip_echo)
from backends.openai_api.payload import sampling_params
from backends.openai_api.policy import OpenAIPolicy

log = logging.getLogger(__name__)


class OpenAIChatPolicy(OpenAIPolicy):
    """A guide policy served by an OpenAI-compatible chat-completions endpoint."""

    backend = "openai-chat"
    chat = True

    def __init__(self, spec: str, *, model: str | None = None, system: str | None = None,
                 instruction: str | None = None, prefill: str | None = "auto", **options) -> None:
        if model is None:
            model = spec.split(":", 1)[1] if spec.startswith("openai-chat:") else spec
        if not model.strip():
            raise RlgfError(f"no model name in {spec!r}", hint="write it as openai-chat:MODEL, e.g. openai-chat:gpt-4o-mini")
        options["prompts_per_request"] = 1  # one conversation per chat request
        super().__init__(spec, model=model, **options)
        self.system = DEFAULT_SYSTEM if system is None else system
        self.instruction = check_instruction(DEFAULT_INSTRUCTION if instruction is None else instruction)
        self.prefill_asked = check_prefill(prefill)
        self._prefill: str | None = None if self.prefill_asked == "auto" else self.prefill_asked
        self.probe_note = "" if self._prefill is None else f"prefill {self._prefill} (as asked)"

    @classmethod
    def from_spec(cls, arg: str, *, spec: str | None = None, device=None, **kwargs) -> "OpenAIChatPolicy":
        return cls(spec or f"openai-chat:{arg}", model=arg, **kwargs)

    @classmethod
    def options_from(cls, settings: RunSettings) -> dict[str, Any]:
        opts = super().options_from(settings)
        for field, name in (("guide_system", "system"), ("guide_instruction", "instruction"),
                            ("guide_prefill", "prefill")):
            if getattr(settings, field) is not None:
                opts[name] = getattr(settings, field)
        return opts

    def describe(self) -> str:
        return f"openai-chat:{self.model} at {self.endpoint}"

    # -- prefill ------------------------------------------------------------------
    @property
    def prefill(self) -> str:
        """The prefill form in use (probed on first use under ``auto``)."""
        if self._prefill is None:
            self._prefill = self._probe()
        return self._prefill

    @property
    def can_continue(self) -> bool:  # type: ignore[override]
        return self.prefill != "none"

    @property
    def approximate(self) -> bool:
        """Roll-outs from a prefix are asked for in words (``instruct``), not prefilled."""
        return self._prefill == "instruct"

    def _probe(self) -> str:
        oa = self._transport._oa
        if self.endpoint.split("/")[0].split(":")[0] == "api.openai.com":
            self.probe_note = "prefill none: api.openai.com does not continue an assistant message"
            return "none"
        refused = []
        for form in PROBE_ORDER:
            body = chat_body("Count from one to ten: one, two,", " three, four,", system=self.system,
                             instruction=self.instruction, prefill=form)
            payload = {"model": self.model, "messages": body["messages"], "max_tokens": 2, "temperature": 0}
            if body["extra"]:
                payload["extra_body"] = body["extra"]
            try:
                self._transport.client.chat.completions.create(**payload, timeout=self._transport.timeout)
            except (oa.BadRequestError, oa.UnprocessableEntityError) as exc:
                refused.append((form, f"HTTP {exc.status_code}: {self._short(exc)}"))
                continue
            except oa.APIStatusError as exc:
                raise self._transport.status_error(exc) from None
            except oa.APIError as exc:
                raise RlgfError(f"could not probe {self.endpoint} for a prefill form: {self._transport.redact(str(exc))}",
                                "check the server, or pass --guide-prefill continue|prefix|trailing|instruct|none") from None
            self.probe_note = f"prefill {form}: the first form the server accepted" + (
                f" (refused: {_listed(refused)})" if refused else "")
            log.info("%s: %s", self.describe(), self.probe_note)
            return form
        self.probe_note = f"prefill none: the server refused every form ({_listed(refused)})"
        return "none"

    def _short(self, exc) -> str:
        """The server's own reason (a too-long probe, an unknown field…), redacted and cut short."""
        body = getattr(exc, "body", None)  # the SDK's parsed error object, when the server sent one
        message = body.get("message") if isinstance(body, dict) else None
        text = self._transport.redact(str(message or getattr(exc, "message", None) or exc)).strip().splitlines()
        reason = text[0] if text else type(exc).__name__
        return reason if len(reason) <= 160 else reason[:157] + "..."

    # -- requests -------------------------------------------------------------------
    def complete(self, prompts: Sequence[str], *, max_new_tokens: int, min_new_tokens: int = 0,
                 sampling: Sampling = Sampling()) -> list[str]:
        return super().complete([encode_request(p) for p in prompts], max_new_tokens=max_new_tokens,
                                min_new_tokens=min_new_tokens, sampling=sampling)

    def continue_from(self, prompts: Sequence[str], prefixes: Sequence[str], *, max_new_tokens: int,
                      min_new_tokens: int = 0, sampling: Sampling = Sampling()) -> list[str]:
        if not self.can_continue:
            raise RlgfError(f"{self.describe()} cannot continue a partial reply ({self.probe_note})",
                            "use --alg ppo++ (guide roll-ins only), or --guide-prefill instruct (approximate)")
        requests = [encode_request(p, x) if x else encode_request(p) for p, x in zip(prompts, prefixes)]
        return super().complete(requests, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
                                sampling=sampling)

    def _key_extras(self) -> dict[str, Any]:
        extras = {"chat": [self.system, self.instruction]}
        if self._prefill is not None:
            extras["prefill"] = self._prefill
        return extras

    def _payload(self, prompts: list[str], max_tokens: int, sampling: Sampling, params: dict) -> dict[str, Any]:
        (request,) = prompts
        prompt, prefix = decode_request(request)
        body = chat_body(prompt, prefix, system=self.system, instruction=self.instruction,
                         prefill=self.prefill if prefix else "none")
        payload: dict[str, Any] = {"model": self.model, "messages": body["messages"], "max_tokens": int(max_tokens)}
        fields = sampling_params(sampling, extensions=self.extensions)
        payload.update((k, v) for k, v in fields.items() if k != "top_k")
        extra = dict(body["extra"])
        if "top_k" in fields:
            extra["top_k"] = fields["top_k"]
        if self.extensions and params.get("min_tokens"):
            extra["min_tokens"] = int(params["min_tokens"])
        if extra:
            payload["extra_body"] = extra
        return payload

    def _texts(self, texts: list[str], prompts: list[str]) -> list[str]:
        out = []
        for text, request in zip(texts, prompts):
            prompt, prefix = decode_request(request)
            out.append(strip_echo(text, prefix) if prefix else text)
        return out

    def stats(self) -> dict[str, Any]:
        out = super().stats()
        out["prefill"] = self._prefill or "not probed yet"
        out["prefill_approximate"] = self.approximate
        if self.probe_note:
            out["prefill_note"] = self.probe_note
        return out


def _listed(refused: list[tuple[str, str]]) -> str:
    """``form: reason`` for each refused form; one reason for all when the server gave the same."""
    reasons = {reason for _, reason in refused}
    if len(refused) > 1 and len(reasons) == 1:
        return f"{', '.join(form for form, _ in refused)}: {reasons.pop()}"
    return "; ".join(f"{form}: {reason}" for form, reason in refused)

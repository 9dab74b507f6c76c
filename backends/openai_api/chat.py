"""Pure helpers of the chat-completions guide: request messages, prefill forms, reply parsing.

A roll-in asks a chat model to *continue* a prompt: the prompt goes in the user message,
wrapped in an instruction (``{prompt}`` marks where), under a system message; the reply is
the continuation. A roll-out from the learner's prefix sends that prefix as the final
assistant message to be continued, in one of the forms servers support (:data:`PREFILLS`):

* ``continue`` — ``continue_final_message: true`` and ``add_generation_prompt: false``
  (vLLM, SGLang, ``rlgf serve``);
* ``prefix`` — ``"prefix": true`` on that assistant message (DeepSeek, Mistral);
* ``trailing`` — the assistant message alone (llama.cpp's server continues it);
* ``instruct`` — no prefill: the user message asks in words to continue the partial reply
  (approximate; marked so in ``summary.json``);
* ``none`` — no roll-out from a prefix at all (algorithms that need one refuse to start).

Nothing here does I/O.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from backends.errors import RlgfError
from backends.openai_api.payload import MalformedResponse, ParsedCompletion, _as_count, reply_object

PREFILLS = ("auto", "continue", "prefix", "trailing", "instruct", "none")
#: the forms ``auto`` tries, in order (the first the server accepts wins)
PROBE_ORDER = ("continue", "prefix", "trailing")
DEFAULT_SYSTEM = "You continue text exactly where it stops. You never repeat the given text and never comment on it."
DEFAULT_INSTRUCTION = "Continue this text. Reply with the continuation only.\n\n{prompt}"
INSTRUCT_PREFILL = ("{instruction}\n\nThe reply so far (continue it from exactly where it stops, without repeating "
                    "it):\n{prefix}")


def check_prefill(value: str | None) -> str:
    mode = (value or "auto").strip().lower()
    if mode not in PREFILLS:
        raise RlgfError(f"--guide-prefill {value!r} is not one of {', '.join(PREFILLS)}",
                        "auto probes the server once; continue (vLLM, SGLang), prefix (DeepSeek, Mistral), "
                        "trailing (llama.cpp), instruct (approximate), none")
    return mode


def check_instruction(instruction: str) -> str:
    if "{prompt}" not in instruction:
        raise RlgfError("--guide-instruction has no {prompt} placeholder",
                        "write where the task's prompt goes, e.g. 'Continue this review:\\n\\n{prompt}'")
    return instruction


def encode_request(prompt: str, prefix: str = "") -> str:
    """One conversation request as a string (the cache key and queue unit of the base policy)."""
    return json.dumps({"prompt": prompt, "prefix": prefix}, ensure_ascii=False, sort_keys=True)


def decode_request(text: str) -> tuple[str, str]:
    data = json.loads(text)
    return data["prompt"], data["prefix"]


def chat_body(prompt: str, prefix: str, *, system: str, instruction: str, prefill: str) -> dict[str, Any]:
    """``messages`` (and the server fields a prefill form needs) for one request."""
    user = instruction.replace("{prompt}", prompt)
    messages: list[dict[str, Any]] = []
    if system:
        messages.append({"role": "system", "content": system})
    extra: dict[str, Any] = {}
    if not prefix:
        messages.append({"role": "user", "content": user})
        return {"messages": messages, "extra": extra}
    if prefill in ("instruct", "none", "auto"):
        if prefill != "instruct":
            raise ValueError(f"a prefix cannot be sent with prefill {prefill!r}")
        messages.append({"role": "user", "content": INSTRUCT_PREFILL.format(instruction=user, prefix=prefix)})
        return {"messages": messages, "extra": extra}
    messages.append({"role": "user", "content": user})
    final: dict[str, Any] = {"role": "assistant", "content": prefix}
    if prefill == "prefix":
        final["prefix"] = True
    elif prefill == "continue":
        extra = {"continue_final_message": True, "add_generation_prompt": False}
    messages.append(final)
    return {"messages": messages, "extra": extra}


def parse_chat(body: str | bytes | Mapping[str, Any], n: int = 1) -> ParsedCompletion:
    """Reply texts, finish reasons and usage of a chat-completions reply with ``n`` choices."""
    body = reply_object(body)
    choices = body.get("choices")
    if not isinstance(choices, list) or len(choices) != n:
        raise MalformedResponse(f"reply has {len(choices) if isinstance(choices, list) else 'no'} choices, expected {n}")
    texts, reasons = [], []
    for c in sorted(choices, key=lambda c: c.get("index", 0) if isinstance(c, Mapping) else 0):
        message = c.get("message") if isinstance(c, Mapping) else None
        content = message.get("content") if isinstance(message, Mapping) else None
        if content is None and isinstance(message, Mapping) and "content" in message:
            content = ""  # a reply with no text (e.g. it stopped at once)
        if not isinstance(content, str):
            raise MalformedResponse("a choice has no message content string")
        texts.append(content)
        reasons.append(c.get("finish_reason") if isinstance(c.get("finish_reason"), str) else None)
    usage = body.get("usage")
    prompt_tokens = completion_tokens = None
    if isinstance(usage, Mapping):
        prompt_tokens = _as_count(usage.get("prompt_tokens"))
        completion_tokens = _as_count(usage.get("completion_tokens"))
    return ParsedCompletion(texts, reasons, prompt_tokens, completion_tokens)


def strip_echo(text: str, prefix: str) -> str:
    """A server that answers a prefill by repeating the prefix first: keep what comes after it."""
    if prefix and text.startswith(prefix):
        return text[len(prefix):]
    return text

"""The ``POST /v1/chat/completions`` contract of ``rlgf serve`` as pure functions (no I/O).

A conversation is rendered with the served model's own chat template and its generation
prompt (``add_generation_prompt``), or — with ``continue_final_message: true`` and
``add_generation_prompt: false``, vLLM's prefill form — with the final assistant message left
open so the reply continues it. A model without a template reads the turns as plain
``role: content`` lines ending with ``assistant:``. Fields: ``model``, ``messages``,
``max_tokens`` / ``max_completion_tokens`` (default 256, lowered to what the context leaves),
``temperature``, ``top_p``, ``n``, ``stop``, ``seed``, ``user``, and the extensions ``top_k`` and
``min_tokens``; penalties, ``logit_bias`` and ``stream_options`` at their neutral values. A
message's content is a text or a list of text parts; the ``developer`` role reads as
``system``. Streaming, tools and logprobs are refused with 400, unknown fields too.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from rlgf_cli.serving.contract import (MAX_N, NEUTRAL_ONLY, ApiError, CompletionRequest, _bad, _int, _num, check_body,
                                      finish, parse_seed, refuse_unless_neutral)
from rlgf_cli.training.config import MAX_NEW_TOKENS

ROLES = ("system", "user", "assistant")
#: OpenAI's newer name for the system turn (its reasoning models); templates know only "system"
ROLE_ALIASES = {"developer": "system"}
MAX_MESSAGES = 256
#: the reply's length when the request names none (OpenAI's is "up to the context"), cut to what
#: the context leaves
DEFAULT_MAX_TOKENS = 256
_ACCEPTED = {
    "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "n", "stop", "seed", "user",
    "top_k", "min_tokens", "continue_final_message", "add_generation_prompt",
    "stream", "logprobs", "top_logprobs", "tools", "tool_choice", "response_format",  # refused unless neutral
    *NEUTRAL_ONLY,
}


@dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: list[dict]
    completion: CompletionRequest  # the decoding fields, as a completions request would hold them
    continue_final_message: bool = False
    stop: list[str] = field(default_factory=list)
    #: whether the request set max_tokens (else it is DEFAULT_MAX_TOKENS, lowered to fit the context)
    max_tokens_given: bool = True


def parse_chat_request(body: Any) -> ChatRequest:
    """Check a decoded JSON body; raises :class:`ApiError` (400) with the offending ``param``."""
    body = check_body(body, _ACCEPTED)
    for name in ("stream", "logprobs"):
        if body.get(name) not in (None, False):
            raise _bad(name, f"{name} is not supported by rlgf serve's chat endpoint")
    for name in ("top_logprobs", "tools", "tool_choice", "response_format"):
        if body.get(name) is not None:
            raise _bad(name, f"{name} is not supported by rlgf serve's chat endpoint")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("model", "'model' must be a non-empty string")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages", "'messages' must be a non-empty list")
    if len(messages) > MAX_MESSAGES:
        raise _bad("messages", f"at most {MAX_MESSAGES} messages per request, got {len(messages)}")
    turns = [_turn(m, i) for i, m in enumerate(messages)]
    refuse_unless_neutral(body)
    cont = body.get("continue_final_message", False)
    gen = body.get("add_generation_prompt", not cont)
    if not isinstance(cont, bool) or not isinstance(gen, bool):
        raise _bad("continue_final_message", "continue_final_message and add_generation_prompt must be booleans")
    if cont and gen:
        raise _bad("continue_final_message", "continue_final_message needs add_generation_prompt: false")
    if cont and turns[-1]["role"] != "assistant":
        raise _bad("continue_final_message", "continue_final_message needs a final assistant message to continue")
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    decoding = {"max_tokens": limit if limit is not None else DEFAULT_MAX_TOKENS}
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else stop if isinstance(stop, list) else [] if stop is None else None
    if stops is None or len(stops) > 4 or not all(isinstance(s, str) for s in stops):
        raise _bad("stop", "'stop' must be a string or a list of at most 4 strings")
    seed = parse_seed(body)
    completion = CompletionRequest(
        model=model, prompts=[""], max_tokens=_int(decoding, "max_tokens", DEFAULT_MAX_TOKENS, 0, MAX_NEW_TOKENS),
        temperature=_num(body, "temperature", 1.0, 0.0, 2.0), top_p=_num(body, "top_p", 1.0, 0.0, 1.0, low_open=True),
        top_k=max(0, _int(body, "top_k", 0, -1)), min_tokens=_int(body, "min_tokens", 0, 0, MAX_NEW_TOKENS),
        n=_int(body, "n", 1, 1, MAX_N), seed=seed,
    )
    return ChatRequest(model, turns, completion, continue_final_message=cont, stop=[s for s in stops if s],
                       max_tokens_given=limit is not None)


def _turn(message: Any, i: int) -> dict:
    """One message as ``{"role", "content"}``: text content, or OpenAI's list of text parts joined."""
    what = f"messages[{i}] must have a role ({', '.join((*ROLES, *ROLE_ALIASES))}) and a text content"
    if not isinstance(message, dict):
        raise _bad("messages", what)
    role = message.get("role")
    role = ROLE_ALIASES.get(role, role) if isinstance(role, str) else None
    content = message.get("content")
    if isinstance(content, list):
        if not all(isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
                   for part in content):
            raise _bad("messages", f"messages[{i}]: rlgf serve reads only text parts "
                                   "({\"type\": \"text\", \"text\": ...}), not images, audio or files")
        content = "".join(part["text"] for part in content)
    if role not in ROLES or not isinstance(content, str):
        raise _bad("messages", what)
    return {"role": role, "content": content}


def render(policy, req: ChatRequest) -> str:
    """The prompt text the served model reads for ``req``."""
    tokenizer = getattr(policy, "tokenizer", None)
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        try:
            return tokenizer.apply_chat_template(req.messages, tokenize=False,
                                                 add_generation_prompt=not req.continue_final_message,
                                                 continue_final_message=req.continue_final_message)
        except Exception as exc:  # noqa: BLE001 - jinja errors for turns the template rejects
            raise ApiError(400, f"the model's chat template cannot render these messages: {exc}",
                           param="messages") from None
    turns = req.messages[:-1] if req.continue_final_message else req.messages
    text = "".join(f"{m['role']}: {m['content']}\n" for m in turns) + "assistant:"
    return text + (" " + req.messages[-1]["content"] if req.continue_final_message else "")


def build_chat_reply(req: ChatRequest, prompt: str, texts: list[str], count_tokens: Callable[[str], int],
                     model: str) -> dict:
    choices, completion_tokens = [], 0
    for i, text in enumerate(texts):
        text, n_tokens, reason = finish(text, req.stop, req.completion.max_tokens, count_tokens)
        completion_tokens += n_tokens
        choices.append({"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": reason,
                        "logprobs": None})
    prompt_tokens = count_tokens(prompt)
    return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": model, "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}}

"""A tokenizer's chat template: rendering a conversation for a reply, and the end-of-turn token."""

from __future__ import annotations

from typing import Sequence

from backends.errors import RlgfError


def has_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render(tokenizer, messages: Sequence[dict]) -> str:
    """``messages`` rendered with ``tokenizer``'s own template and its generation prompt."""
    try:
        return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    except Exception as exc:  # noqa: BLE001 - a template raises jinja's own errors for odd turns
        raise RlgfError(f"the chat template of {getattr(tokenizer, 'name_or_path', 'the tokenizer')} "
                        f"could not render a conversation: {exc}",
                        "check the rows' roles and order, or pass --chat-template off") from None


def end_of_turn_id(tokenizer) -> int | None:
    """The token the template writes right after an assistant reply (``<|im_end|>``,
    ``<|eot_id|>``, ``<end_of_turn>``…), or None when there is no template or no such token."""
    if not has_template(tokenizer):
        return None
    marker = "\uE000rlgf\uE000"
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": marker}]
    try:
        text = tokenizer.apply_chat_template(turns, tokenize=False)
    except Exception:  # noqa: BLE001 - a template that cannot render a reply has no end-of-turn to find
        return None
    if marker not in text:
        return None
    tail = text.split(marker, 1)[1].strip()
    if not tail:
        return None
    ids = tokenizer(tail, add_special_tokens=False)["input_ids"]
    if not ids:
        return None
    # only a special (added) token ends a turn; plain text after a reply is not a stop signal
    special = set(getattr(tokenizer, "all_special_ids", []) or []) | set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
    return int(ids[0]) if int(ids[0]) in special else None

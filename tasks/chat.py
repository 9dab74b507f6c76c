"""Chat rows and chat templates for ``--task prompts``.

A chat row holds ``messages``: a list of ``{"role", "content"}`` turns (roles ``system``,
``user``, ``assistant``). A policy whose tokenizer has a chat template gets the row rendered
by that template with the generation prompt (``add_generation_prompt=True``), so the
completion is the assistant's reply; generation ends at the template's end-of-turn token
(:func:`backends.hf.chat_template.end_of_turn_id`, which :class:`~backends.hf.policy.HFPolicy`
adds to its stop tokens).
Without a template (a base model, an API model) the turns are written as plain
``role: content`` lines ending with ``assistant:``, which is also the text rewards see.

``--chat-template`` says when to render: ``auto`` (the default) for chat rows when the
policy's tokenizer has a template, ``on`` for every row (a plain ``prompt`` becomes one user
turn; a policy without a template is then an error), ``off`` never.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from backends.errors import RlgfError
from tasks.table_rows import place

ROLES = ("system", "user", "assistant")
MODES = ("auto", "on", "off")


def check_mode(mode: str | None) -> str:
    value = (mode or "auto").strip().lower()
    if value not in MODES:
        raise RlgfError(f"--chat-template {mode!r} is not one of {', '.join(MODES)}",
                        "auto renders chat rows with the model's template; on renders every row; off never")
    return value


def parse_messages(value, path: Path, line: int) -> tuple[dict, ...]:
    """The turns of one row's ``messages``, checked; an error names the file and line."""
    where = place(path, line)
    if not isinstance(value, (list, tuple)) or not value:
        raise RlgfError(f"{where}: 'messages' must be a non-empty list of {{\"role\", \"content\"}} turns")
    turns = []
    for i, turn in enumerate(value):
        if not isinstance(turn, dict) or not isinstance(turn.get("content"), str):
            raise RlgfError(f"{where}: messages[{i}] must be an object with a 'role' and a text 'content'")
        role = turn.get("role")
        if role not in ROLES:
            raise RlgfError(f"{where}: messages[{i}] has role {role!r}", f"use one of {', '.join(ROLES)}")
        turns.append({"role": role, "content": turn["content"]})
    if turns[-1]["role"] == "assistant":
        raise RlgfError(f"{where}: the last turn is the assistant's; the learner writes that turn",
                        "end each conversation with a user (or system) turn")
    if not any(t["role"] == "user" for t in turns):
        raise RlgfError(f"{where}: 'messages' has no user turn")
    return tuple(turns)


def plain_text(messages: Sequence[dict]) -> str:
    """The conversation as plain lines, ready for an assistant reply (no template needed)."""
    return "".join(f"{t['role']}: {t['content']}\n" for t in messages) + "assistant:"


class ChatPrompts:
    """The prompt text each policy gets for a task's examples, under a ``--chat-template`` mode."""

    def __init__(self, mode: str | None = "auto") -> None:
        self.mode = check_mode(mode)
        self._cache: dict[tuple[int, str], str] = {}

    def texts(self, examples, policy) -> list[str]:
        from backends.hf.chat_template import has_template, render  # (backends.hf loads torch: not at import)

        tokenizer = getattr(policy, "tokenizer", None)
        if self.mode == "off":
            return [ex.prompt for ex in examples]
        if tokenizer is None or not has_template(tokenizer):
            if self.mode == "on" and tokenizer is not None:
                raise RlgfError(f"--chat-template on, but the tokenizer of {getattr(policy, 'spec', 'the model')} "
                                "has no chat template", "use an instruct model, or --chat-template auto/off")
            return [ex.prompt for ex in examples]
        out = []
        for ex in examples:
            messages = ex.meta.get("messages")
            if messages is None:
                if self.mode != "on":
                    out.append(ex.prompt)
                    continue
                messages = ({"role": "user", "content": ex.prompt},)
            key = (id(tokenizer), ex.prompt)
            if key not in self._cache:
                self._cache[key] = render(tokenizer, messages)
            out.append(self._cache[key])
        return out

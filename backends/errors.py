"""The one exception type users see.

Every layer raises :class:`RlgfError` for problems the user can fix (bad spec, missing
file, unreachable server…). The CLI turns it into a single ``[error] …`` line and exit
status 1; anything else is a bug and keeps its traceback. :func:`did_you_mean` is the one
"did you mean …?" for a misspelt name (task, algorithm, backend, option, metric…).
"""

from __future__ import annotations

from typing import Iterable


class RlgfError(Exception):
    """A user-facing error: ``message`` says what went wrong, ``hint`` what to do about it."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} — {self.hint}" if self.hint else self.message


class RlgfWarning(UserWarning):
    """Something the user should know that does not stop the work (a prompt cut to fit, say);
    the CLI prints it as one ``warning: …`` line."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none): what an
    ``[error]`` line quotes of a library's error."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def did_you_mean(name: str, choices: Iterable[str], *, n: int = 3, cutoff: float = 0.6) -> str:
    """``"did you mean 'x'? "`` (or ``'x' or 'y'``, closest first) for the ``choices`` closest to ``name``, or
    ``""`` when none is close: the one way every layer suggests the name a user meant to type.

    The trailing space lets a caller put it straight before the rest of a hint; ``n`` is the
    most names suggested and ``cutoff`` how alike (0–1) a name must be to be suggested.
    """
    import difflib

    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=n, cutoff=cutoff)
    return f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""


def with_suggestion(message: str, name: str, choices: Iterable[str], **options) -> str:
    """``message``, then ``"; did you mean 'x'?"`` when one of ``choices`` is close to ``name``
    (``options`` as for :func:`did_you_mean`)."""
    suggestion = did_you_mean(name, choices, **options)
    return f"{message}; {suggestion.rstrip()}" if suggestion else message


def debug_on() -> bool:
    """Whether ``RLGF_DEBUG`` asks for tracebacks: 1, true, yes or on (any case); 0, false, no, off
    or nothing leave it off."""
    import os

    return os.environ.get("RLGF_DEBUG", "").strip().lower() not in ("", "0", "false", "no", "off")

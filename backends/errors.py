"""The one exception type users see.

Every layer raises :class:`RlgfError` for problems the user can fix (bad spec, missing
file, unreachable server…). The CLI turns it into a single ``[error] …`` line and exit
status 1; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class RlgfError(Exception):
    """A user-facing error: ``message`` says what went wrong, ``hint`` what to do about it."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} — {self.hint}" if self.hint else self.message


def did_you_mean(name: str, choices) -> str:
    """``"did you mean 'x'? "`` for the closest of ``choices`` to ``name``, else ``""``."""
    import difflib

    close = difflib.get_close_matches(name, list(choices), n=1)
    return f"did you mean '{close[0]}'? " if close else ""

"""Output for people and for scripts: errors, progress, tables.

Colour and live progress bars appear only when stderr is a terminal; otherwise progress is
one plain line per iteration (or nothing with ``--quiet``). Results go to stdout, messages
to stderr, so ``--json -`` output can be piped.
"""

from __future__ import annotations

import functools
import os
import sys
import warnings
from typing import Any, Callable, Sequence

import typer
from rich.console import Console

from backends.errors import RlgfError, RlgfWarning, debug_on, first_line

#: documented exit codes
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

#: messages wrap at words on a terminal (the terminal itself would cut them mid-word) and stay one
#: line each in a log or a pipe, where a line is a record
err_console = Console(stderr=True, highlight=False)
err_console.soft_wrap = not err_console.is_terminal
out_console = Console(highlight=False, soft_wrap=True)


def count(n: int, noun: str) -> str:
    """``1 iteration``, ``2 iterations``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def error_line(message: str, hint: str | None = None) -> str:
    """One line, whatever the message holds (library errors often span several)."""
    text = " ".join(str(message).split()).rstrip(".")
    if hint:
        text += " — " + " ".join(str(hint).split())
    return f"[error] {text}"


def print_error(message: str, hint: str | None = None) -> None:
    # plain write: the line must look the same on a terminal and in a log, and rich markup
    # in user-supplied names (e.g. "[x]") must not be interpreted
    sys.stderr.write(error_line(message, hint) + "\n")
    sys.stderr.flush()


def handle_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the project's one user-facing exception into ``[error] …`` and exit 1.

    Unexpected exceptions also become one line (a traceback only with ``RLGF_DEBUG=1``).
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        quiet_libraries()
        try:
            return func(*args, **kwargs)
        except typer.Exit:
            raise
        except RlgfError as exc:
            code = getattr(exc, "exit_code", EXIT_INTERRUPTED) if type(exc).__name__ == "Interrupted" else EXIT_ERROR
            print_error(exc.message, exc.hint)
            raise typer.Exit(code) from None
        except KeyboardInterrupt:
            print_error("interrupted")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except MemoryError:
            print_error("out of memory", "use smaller --episodes / --rollout-batch-size / --minibatch-size")
            raise typer.Exit(EXIT_ERROR) from None
        except Exception as exc:  # noqa: BLE001 - the CLI boundary
            if debug_on():  # RLGF_DEBUG=0, false, no or off is off
                raise
            name = type(exc).__name__
            if "OutOfMemory" in name or "can't allocate memory" in str(exc):  # CUDA's, or torch's CPU allocator
                where = "CPU memory" if "can't allocate memory" in str(exc) else "device memory"
                print_error(f"out of {where} ({first_line(exc)})",
                            "use smaller --episodes / --rollout-batch-size / --minibatch-size / --max-new-tokens")
            else:
                print_error(f"unexpected {name}: {exc}", "rerun with RLGF_DEBUG=1 for the traceback and report it")
            raise typer.Exit(EXIT_ERROR) from None

    return wrapper


def quiet_libraries() -> None:
    """Keep third-party progress bars and chatter out of our output.

    Called when a command starts (not at import time, so importing rlgf changes nothing
    for library users); the variables are read when transformers is first imported.
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    if not getattr(warnings.showwarning, "rlgf", False):
        warnings.showwarning = _show_warning


def _show_warning(message, category, filename, lineno, file=None, line=None, _default=warnings.showwarning):
    """rlgf's own warnings (:class:`RlgfWarning`) as one ``warning: …`` line, from rank 0 alone when
    several processes train (every rank meets the same prompts, so each would say it again); others
    as Python shows them."""
    if issubclass(category, RlgfWarning):
        if not _other_rank():
            err_console.print(f"warning: {message}", markup=False)
    else:
        _default(message, category, filename, lineno, file, line)


_show_warning.rlgf = True


def _other_rank() -> bool:
    """Whether this process is a data-parallel rank other than 0 (torchrun's ``RANK``)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 and int(os.environ.get("RANK", "0") or 0) > 0
    except ValueError:  # junk launch variables are refused, with their own error, when training starts
        return False


def is_terminal() -> bool:
    return sys.stderr.isatty() and os.environ.get("TERM") != "dumb"


def print_result_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]], align_right_from: int = 1) -> None:
    """A result table on stdout (the library makes Markdown; this layer draws): fitted to a
    terminal, at its natural width in a pipe or a log (rich would fold every cell at 80 columns)."""
    from rich.table import Table

    table = Table(title=title)
    for i, col in enumerate(columns):
        table.add_column(col, justify="right" if i >= align_right_from else "left", overflow="fold")
    for row in rows:
        table.add_row(*[str(c) for c in row])
    fitted = out_console.is_terminal or os.environ.get("COLUMNS")
    (out_console if fitted else Console(highlight=False, width=1000)).print(table)

"""The ``rlgf`` entry point: choose the memory allocator, then run the command line.

The allocator is chosen here, before typer, rich and the commands are imported, because
choosing one means restarting the process (:mod:`backends.allocator`)."""

from __future__ import annotations

import sys


def main() -> None:
    from backends.allocator import maybe_reexec
    from backends.errors import RlgfError

    try:
        maybe_reexec()
    except RlgfError as exc:
        from rlgf_cli.commands.console import EXIT_ERROR, print_error

        print_error(exc.message, exc.hint)
        sys.exit(EXIT_ERROR)
    from rlgf_cli.app import main as run

    run()

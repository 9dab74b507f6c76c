"""The ``rlgf`` command line: thin Typer commands over the library.

Exit codes: 0 success · 1 user or runtime error (one ``[error] …`` line) · 2 usage error ·
130 interrupted (143 by SIGTERM; a checkpoint is written first when training).
"""

from __future__ import annotations

import inspect
import json
from typing import Annotated, Optional

import typer

from rlgf_cli import __version__
from rlgf_cli.commands.difficulty import difficulty_command
from rlgf_cli.commands.distill import distill_command
from rlgf_cli.commands.eval import eval_command
from rlgf_cli.commands.plot import plot_command
from rlgf_cli.commands.serve import serve_command
from rlgf_cli.commands.train import train_command
from rlgf_cli.commands.console import handle_errors, out_console

app = typer.Typer(
    name="rlgf",
    rich_markup_mode="rich",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    help=(
        "Learning to Generate Better Than Your LLM: fine-tune a small learner LM with PPO-family "
        "RL, helped by a guide policy.\n\n"
        "[bold]Examples[/]\n\n"
        "  rlgf train --task rotten-tomatoes --alg ppo --iterations 10 --out runs/ppo\n\n"
        "  rlgf eval --policy smollm2 --checkpoint runs/ppo/final --limit 200\n\n"
        "Exit codes: 0 ok, 1 error, 2 usage, 130 interrupted (143: SIGTERM)."
    ),
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"rlgf {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: Annotated[
        Optional[bool],
        typer.Option("--version", "-V", callback=_version, is_eager=True, help="Show the version and exit."),
    ] = None,
) -> None:
    """rlgf — RL with guide policies."""


app.command("train", no_args_is_help=False)(train_command)
app.command("eval")(eval_command)
app.command("difficulty")(difficulty_command)
app.command("distill")(distill_command)
app.command("plot")(plot_command)


#: below this many columns per field a listing prints one block per entry instead of a table
#: (a six-column table on an 80-column terminal wraps every cell into a one-word-wide strip)
MIN_COLUMN_WIDTH = 28


def _print_listing(title: str, rows: list[dict], columns: list[tuple[str, str]], as_json: bool,
                   caption: str | None = None) -> None:
    """``rows`` as JSON on stdout, or for people as a table of ``(header, key)`` columns
    (``caption`` under it) where the terminal is wide enough, else one block per row: its
    first column as a heading, the other fields as label / value lines wrapped to the width."""
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    def cell(r: dict, key: str) -> str:
        c = r.get(key, "")
        return ", ".join(c) if isinstance(c, (list, tuple)) else str(c)

    if out_console.width >= MIN_COLUMN_WIDTH * len(columns):
        table = Table(title=title, caption=caption, caption_justify="left")
        for i, (header, _) in enumerate(columns):
            table.add_column(header, no_wrap=i == 0, style="bold" if i == 0 else None)
        for r in rows:
            table.add_row(*[cell(r, key) for _, key in columns])
        out_console.print(table)
        return
    out_console.print(title, style="bold")
    (_, first), fields = columns[0], columns[1:]
    for r in rows:
        out_console.print()
        out_console.print(cell(r, first), style="bold")
        grid = Table.grid(padding=(0, 2))
        grid.add_column(no_wrap=True, style="dim")
        grid.add_column(ratio=1)
        for header, key in fields:
            grid.add_row(header, cell(r, key))
        out_console.print(grid, soft_wrap=False)
    if caption:
        out_console.print()
        out_console.print(caption, soft_wrap=False)


_JSON_OPTION = typer.Option("--json", help="Print machine-readable JSON to stdout.")


@app.command("tasks")
@handle_errors
def tasks_command(as_json: Annotated[bool, _JSON_OPTION] = False) -> None:
    """List the tasks (built-in and from the `rlgf.tasks` entry points) with their data source, default learner, reward and metrics.

    Examples:

      rlgf tasks

      rlgf tasks --json | jq '.[].name'
    """
    from rlgf_cli.training.config import TrainConfig
    from tasks import available

    rows = available()
    if not as_json:  # for people: the default task marked, a broken plug-in's reason (which names its entry
        # point) as its source, and "data=PATH" (a task option) as the flag that sets it
        rows = [{**r, "name": r["name"] + (" (default)" if r["name"] == TrainConfig.task else ""),
                 "data_source": str(r.get("data_source") or "").replace("data=PATH", "--data PATH"),
                 **({"source": r["error"], "description": ""} if r.get("error") else {})} for r in rows]
    _print_listing("rlgf tasks", rows, [("name", "name"), ("description", "description"), ("source", "source"),
                   ("data source", "data_source"), ("default learner", "default_learner"), ("reward", "reward"),
                   ("metrics", "metrics")], as_json)


@app.command("backends")
@handle_errors
def backends_command(as_json: Annotated[bool, _JSON_OPTION] = False) -> None:
    """List the registered policy backends (built-in and from the `rlgf.backends` entry points).

    Examples:

      rlgf backends

      rlgf backends --json
    """
    from backends import available

    from backends.embedded import ALIASES

    names = "; ".join(f"{name}: {what}" for name, what in ALIASES.items())
    _print_listing("rlgf backends", available(), [("name", "name"), ("target", "target"), ("source", "source"),
                   ("description", "description")], as_json,
                   caption=f"Specs without a backend name: {names}; a model folder or a run folder (its final/) "
                           "is read as hf:PATH.")


app.command("serve")(handle_errors(serve_command))


def reflow_help(doc: str | None) -> str | None:
    """A docstring as help text that wraps to the terminal.

    Typer's rich mode keeps a docstring's single line breaks, so help written at source width
    breaks into ragged lines on an 80-column terminal. Prose paragraphs become one line each
    (rich wraps them); a paragraph whose lines are indented (command examples) keeps its lines.
    """
    if not doc:
        return doc
    paragraphs = []
    for para in inspect.cleandoc(doc).split("\n\n"):
        lines = para.split("\n")
        if any(line.startswith(" ") for line in lines):
            paragraphs.append(para)
        else:
            paragraphs.append(" ".join(line.strip() for line in lines))
    return "\n\n".join(paragraphs)


def keep_option_names_whole() -> None:
    """Let only the help column of Typer's option tables wrap.

    On a narrow terminal rich shrinks the widest columns alike, so at 80 columns a flag name
    such as ``--no-whiten-advantages`` came out as ``--no-whiten-advanta…``, unusable as typed.
    Marking every column but the last (the help) ``no_wrap`` makes the help text give way
    instead. Typer builds its tables through ``typer.rich_utils.Table``; if a later Typer
    builds them otherwise this does nothing and the help stays as Typer draws it.
    """
    import typer.rich_utils as rich_utils
    from rich.table import Table

    class _WholeNamesTable(Table):
        def add_row(self, *renderables, **kwargs):  # columns are created by the first row
            super().add_row(*renderables, **kwargs)
            for column in self.columns[:-1]:
                column.no_wrap = True

    if getattr(rich_utils, "Table", None) is Table:
        rich_utils.Table = _WholeNamesTable


keep_option_names_whole()

for _info in app.registered_commands:
    if _info.help is None and _info.callback is not None:
        _info.help = reflow_help(inspect.getdoc(_info.callback))


def check_environment(environ=None) -> None:
    """Environment variables that break torch's own import (so every command, at its first model
    load, with a misleading message): refused up front with one ``[error]`` line."""
    from backends.cache import check_inductor_cache_env

    check_inductor_cache_env(environ)


def main() -> None:
    from backends.allocator import maybe_reexec
    from backends.errors import RlgfError
    from rlgf_cli.commands.console import EXIT_ERROR, print_error

    try:
        maybe_reexec()  # tcmalloc where installed (backends/allocator.py)
        check_environment()
    except RlgfError as exc:
        print_error(exc.message, exc.hint)
        raise SystemExit(EXIT_ERROR) from None
    app()


if __name__ == "__main__":  # pragma: no cover
    main()

"""Help fits an 80-column terminal: flag names stay whole and each example stays on its lines."""

from __future__ import annotations

import inspect

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from rlgf_cli.app import app

COMMANDS = ["train", "eval", "difficulty", "distill", "serve", "plot", "tasks", "backends"]


def render(*args: str, columns: int = 80) -> str:
    result = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": str(columns), "TERMINAL_WIDTH": str(columns)})
    assert result.exit_code == 0, result.output
    return result.stdout


def example_lines(doc: str) -> list[str]:
    """The command lines of a help text's Examples paragraphs (a `\\` continuation is its own line)."""
    text = inspect.cleandoc(doc)
    if "Examples" not in text:
        return []
    lines = []
    for para in text.split("Examples", 1)[1].split("\n\n"):
        if para.startswith("  "):
            lines += [line.strip() for line in para.splitlines()]
    return lines


@pytest.mark.parametrize("command", COMMANDS)
def test_every_flag_name_is_shown_whole_at_80_columns(command):
    shown = render(command)
    params = get_command(app).commands[command].params
    # the table's cell: a parameter's long names joined by commas (`--guide-concurrency,--concurrency`)
    names = [",".join(n for n in names if n.startswith("--")) for p in params for names in (p.opts, p.secondary_opts)]
    names = [n for n in names if n]
    assert names
    cut = [n for n in names if n not in shown]
    assert not cut, f"cut or missing at 80 columns: {cut}"


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_examples_do_not_wrap_at_80_columns(command):
    cmd = get_command(app)
    doc = cmd.help if command is None else cmd.commands[command].help
    shown = render(*([command] if command else [])).splitlines()
    for line in example_lines(doc or ""):
        assert any(row.strip().startswith(line) and row.strip().endswith(line) for row in shown), \
            f"{command or 'rlgf'}: example wrapped at 80 columns: {line}"


@pytest.mark.parametrize("command", COMMANDS)
def test_every_default_written_into_a_help_text_is_shown(command):
    """A help text that states its default as "[default: …]" must escape the bracket: rich reads
    an unescaped one as a markup tag and drops it, so `--lr` showed no default at all."""
    import re

    cmd = get_command(app).commands[command]
    shown = " ".join(render(command, columns=1000).split())
    for param in cmd.params:
        match = re.search(r"\[default: ([^\]]+)\]", getattr(param, "help", None) or "")
        if match:
            assert f"[default: {' '.join(match.group(1).split())}]" in shown, (param.name, match.group(0))

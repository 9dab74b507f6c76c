"""``rlgf plot``: learning curves of run folders → :func:`rlgf_cli.evaluation.curves.plot_curves`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from rlgf_cli.commands.console import count, err_console, handle_errors


@handle_errors
def plot_command(
    runs: Annotated[list[Path], typer.Argument(help="Run folders (the --out of rlgf train runs).", show_default=False)],
    out: Annotated[Path, typer.Option(help="PNG file to write.")] = Path("curves.png"),
    metric: Annotated[str, typer.Option(help="Any metric of metrics.jsonl (reward_mean, kl_exact, approx_kl, …).")]
    = "reward_mean",
    title: Annotated[Optional[str], typer.Option(help="Chart title.", show_default="the metric's name")] = None,
    json_out: Annotated[Optional[str], typer.Option("--json", help="Also write the curves as JSON to FILE ('-' for stdout).")]
    = None,
) -> None:
    """Plot learning curves: one line per algorithm, seeds as a ± std band.

    Runs are grouped by their algorithm; a warm-started run (--init) gets its own group, such
    as BC+ppo++ for a run started from a BC run.

    [bold]Examples[/]

      rlgf plot runs/ppo-seed0 runs/ppo-seed1 runs/d2lols-seed0 \\
        runs/d2lols-seed1 --out curves.png

      rlgf plot runs/*/ --metric kl_exact --out kl.png
    """
    from rlgf_cli.evaluation.curves import group_runs, logged_metrics, plot_curves, repeated_seeds
    from rlgf_cli.files import check_png, ensure_writable

    check_png(out, "--out")
    if json_out and json_out != "-":  # before the plot is written, so a bad path leaves nothing
        ensure_writable(json_out, "--json")
    groups = group_runs(runs)
    for note in repeated_seeds(groups):
        err_console.print(f"warning: {note}", markup=False)
    data = plot_curves(groups, out, metric=metric, title=title)
    if json_out == "-":
        typer.echo(json.dumps(data, indent=2))
    elif json_out:
        from rlgf_cli.files import write_atomic

        write_atomic(json_out, json.dumps(data, indent=2))
    for label in [k for k, v in data.items() if not v["iterations"]]:  # a BC run logs bc_loss, no reward
        err_console.print(f"warning: {label} is not drawn: {count(len(groups[label]), 'run')} logged no {metric} "
                          f"(it has {', '.join(logged_metrics(groups[label])) or 'no metric'})", markup=False)
    groups = ", ".join(f"{k} ({count(max(v['seeds']), 'run')})" for k, v in data.items() if v["iterations"])
    err_console.print(f"wrote {out}: {metric} for {groups}", markup=False)

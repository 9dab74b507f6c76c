"""``rlgf eval``: evaluate checkpoints and policies side by side on a task split."""

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from .console import err_console, handle_errors, out_console
from .files import write_atomic


@handle_errors
def eval_command(
    checkpoint: Annotated[Optional[list[Path]], typer.Option("--checkpoint", "-c", help="A checkpoint folder (repeatable).")] = None,
    policy: Annotated[Optional[list[str]], typer.Option("--policy", "-p", help="A policy spec, e.g. smollm2 or hf:PATH (repeatable).")] = None,
    task: Annotated[Optional[str], typer.Option(help="Task name. Default: the checkpoint's task, else rotten-tomatoes.")] = None,
    split: Annotated[str, typer.Option(help="train, val or test.")] = "test",
    limit: Annotated[Optional[int], typer.Option(help="Evaluate only the first N examples of the split.")] = None,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    reference: Annotated[Optional[str], typer.Option(help="Frozen model for output_perplexity. Default: the checkpoint's initial learner, else the task's default learner.")] = None,
    data: Annotated[Optional[str], typer.Option(help="Task data file or folder.")] = None,
    reward_model: Annotated[Optional[str], typer.Option(help="Reward classifier folder (sentiment tasks).")] = None,
    reward: Annotated[Optional[str], typer.Option(help="Reward: a task's named reward or module:function.")] = None,
    bertscore_model: Annotated[Optional[str], typer.Option(help="BERTScore model name or folder (CommonGen).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    batch_size: Annotated[int, typer.Option(help="Prompts per generation batch.")] = 32,
    json_out: Annotated[Optional[str], typer.Option("--json", help="Write results as JSON to FILE ('-' for stdout).")] = None,
    samples: Annotated[Optional[Path], typer.Option(help="Write every generation as JSONL to FILE.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress or table output.")] = False,
) -> None:
    """Evaluate one or more policies on the same prompts and print one table.

    [bold]Examples[/]

      rlgf eval --policy smollm2 --checkpoint runs/ppo/final --limit 200

      rlgf eval -c runs/ppo/final --split val --json results.json
    """
    from backends.errors import RlgfError

    from .evaluate import run_eval
    from .run import task_options

    specs = [str(c) for c in (checkpoint or [])] + list(policy or [])
    if not specs:
        raise RlgfError("nothing to evaluate", "pass --checkpoint DIR and/or --policy SPEC")
    for c in checkpoint or []:
        if not c.is_dir():
            raise RlgfError(f"checkpoint folder not found: {c}", "pass a folder written by `rlgf train` (e.g. OUT/final)")
    if split not in ("train", "val", "test"):
        raise RlgfError(f"unknown split '{split}'", "use train, val or test")
    if limit is not None and limit < 1:
        raise RlgfError(f"--limit must be >= 1 (got {limit})", "pass a positive number of examples")
    if batch_size < 1:
        raise RlgfError(f"--batch-size must be >= 1 (got {batch_size})", "pass a positive batch size")

    report = run_eval(
        specs,
        task_name=task,
        split=split,
        limit=limit,
        seed=seed,
        reference_spec=reference,
        task_options=task_options(data=data, reward_model=reward_model, reward=reward, bertscore_model=bertscore_model),
        device=device,
        batch_size=batch_size,
        quiet=quiet,
    )
    if samples:
        lines = []
        for res in report["results"]:
            for s in res["samples"]:
                lines.append(json.dumps({"policy": res["policy"], **s}))
        write_atomic(samples, "\n".join(lines))
    public = {
        "results": [{k: v for k, v in r.items() if k != "samples"} for r in report["results"]],
        "task_info": report["task_info"],
    }
    if json_out == "-":
        typer.echo(json.dumps(public, indent=2))
    elif json_out:
        write_atomic(json_out, json.dumps(public, indent=2))
    if not quiet:
        _print_table(public)


def _print_table(report: dict) -> None:
    from rich.table import Table

    results = report["results"]
    metric_names: list[str] = []
    for r in results:
        for m in r["metrics"]:
            if m not in metric_names:
                metric_names.append(m)
    first = results[0]
    table = Table(title=f"{first['task']} · {first['split']} split · n={first['n']}")
    table.add_column("policy")
    table.add_column("decoding")
    for m in metric_names:
        table.add_column(m, justify="right")
    for r in results:
        table.add_row(r["policy"], r["decoding"], *[_fmt(r["metrics"].get(m)) for m in metric_names])
    out_console.print(table)
    for key, value in report.get("task_info", {}).items():
        err_console.print(f"{key}: {value}", markup=False)


def _fmt(value) -> str:
    if value is None:
        return "–"
    return f"{value:.4g}" if abs(value) >= 100 else f"{value:.4f}"

"""``rlgf eval``: evaluate checkpoints and policies side by side on a task split."""

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from rlgf_cli.commands.options import (BertscoreModel, CheckpointTask, Data, Device, Precision, PromptField, PromptMaxTokens, ChatTemplate, Quiet, ReferenceField, Threads,
                                       Reward, RewardLabel, RewardModel, RewardUrl)
from rlgf_cli.commands.console import err_console, handle_errors, out_console
from rlgf_cli.files import ensure_writable, write_all

_DEC = "Decoding (default: the task's)"
_OUT = "Output"


def run_checkpoint(folder: Path, quiet: bool = False) -> Path:
    """A checkpoint folder as given; a run folder (``rlgf train --out``) as its ``final/``, or,
    for a run that has not finished, its latest complete checkpoint — said on stderr."""
    from backends.registry import run_model_choice

    if (folder / "config.json").is_file():
        return folder
    chosen, why = run_model_choice(folder)  # its final/, or a checkpoint newer than that
    if chosen == folder:  # no final/
        if not (folder / "config.toml").is_file():
            return folder
        from rlgf_cli.training.run_folder import latest_checkpoint

        chosen = latest_checkpoint(folder)
        if chosen is None:
            from backends.errors import RlgfError

            raise RlgfError(f"{folder} is an rlgf run with no model yet: it stopped before its first checkpoint",
                            "evaluate another run, or train this one again with --overwrite")
        why = "the run has no final/ yet: its latest checkpoint"
    if not quiet:
        err_console.print(f"{folder} is a run folder: evaluating {chosen} ({why})", markup=False, highlight=False)
    return chosen


#: ``--baseline``, shared with ``rlgf difficulty``
Baseline = Annotated[Optional[str], typer.Option(
    help="The policy the others are compared with prompt by prompt (paired reward difference ± standard error): "
         "a --policy spec or --checkpoint given. \\[default: the first --policy, else the first --checkpoint]")]


def policy_specs(checkpoint: list[Path] | None, policy: list[str] | None, quiet: bool = False) -> list[str]:
    """Checkpoints then policies, checked: at least one, folders exist (a run folder stands for
    its model: :func:`run_checkpoint`), no spec twice."""
    from backends.errors import RlgfError

    if not checkpoint and not policy:
        raise RlgfError("nothing to evaluate", "pass --checkpoint DIR and/or --policy SPEC")
    for c in checkpoint or []:
        if not c.is_dir():
            raise RlgfError(f"checkpoint folder not found: {c}", "pass a folder written by `rlgf train` (e.g. OUT/final)")
    specs = [str(run_checkpoint(c, quiet)) for c in (checkpoint or [])] + list(policy or [])
    seen = set()
    for s in specs:
        if s in seen:
            raise RlgfError(f"'{s}' is given twice", "name each checkpoint or policy once")
        seen.add(s)
    return specs


def check_common(split: str, limit: Optional[int], batch_size: int) -> None:
    from backends.errors import RlgfError

    if split not in ("train", "val", "test"):
        raise RlgfError(f"unknown split '{split}'", "use train, val or test")
    if limit is not None and limit < 1:
        raise RlgfError(f"--limit must be >= 1 (got {limit})", "pass a positive number of examples")
    if batch_size < 1:
        raise RlgfError(f"--batch-size must be >= 1 (got {batch_size})", "pass a positive batch size")


@handle_errors
def eval_command(
    checkpoint: Annotated[Optional[list[Path]], typer.Option("--checkpoint", "-c", help="A checkpoint folder (repeatable).")] = None,
    policy: Annotated[Optional[list[str]], typer.Option("--policy", "-p", help="A policy spec, e.g. smollm2, hf:PATH or openai:MODEL (repeatable).")] = None,
    task: CheckpointTask = None,
    split: Annotated[str, typer.Option(help="train, val or test.")] = "test",
    limit: Annotated[Optional[int], typer.Option(help="Evaluate only the first N examples of the split.")] = None,
    seed: Annotated[int, typer.Option(help="Sampling seed (the first one with --seeds).")] = 0,
    seeds: Annotated[int, typer.Option(help="Run N seeds (seed, seed+1, …) and report mean ± std.")] = 1,
    reference: Annotated[Optional[str], typer.Option(help="Frozen model for output_perplexity, or none to skip it. Default: the checkpoint's initial learner, else the task's default learner (left out, with the reason, when it cannot load).")] = None,
    policy_base_url: Annotated[Optional[str], typer.Option(help="Server of the openai: policies (vLLM, `rlgf serve`…). Default: $OPENAI_BASE_URL.")] = None,
    guide_concurrency: Annotated[int, typer.Option(help="API policies (openai:, openai-chat:): requests in flight at once.")] = 8,
    guide_prompts_per_request: Annotated[int, typer.Option(help="openai: policies: prompts per completions request.")] = 1,
    guide_extensions: Annotated[str, typer.Option(help="API policies: send top_k and min_tokens: auto (ask the server once), on, off.")] = "auto",
    data: Data = None,
    reward_model: RewardModel = None,
    prompt_field: PromptField = None,
    chat_template: ChatTemplate = None,
    prompt_max_tokens: PromptMaxTokens = None,
    reference_field: ReferenceField = None,
    reward_label: RewardLabel = None,
    reward_url: RewardUrl = None,
    reward: Reward = None,
    bertscore_model: BertscoreModel = None,
    decoding: Annotated[Optional[str], typer.Option(help="task, greedy, sample or beam. \\[default: task: sampling for sentiment, beam 5 for CommonGen]", rich_help_panel=_DEC)] = None,
    temperature: Annotated[Optional[float], typer.Option(help="Sampling temperature (0: greedy).", rich_help_panel=_DEC)] = None,
    top_k: Annotated[Optional[int], typer.Option(help="Top-k filtering (0: off).", rich_help_panel=_DEC)] = None,
    top_p: Annotated[Optional[float], typer.Option(help="Nucleus filtering (1: off).", rich_help_panel=_DEC)] = None,
    num_beams: Annotated[Optional[int], typer.Option(help="Beams (1: no beam search).", rich_help_panel=_DEC)] = None,
    max_new_tokens: Annotated[Optional[int], typer.Option(help="Continuation length (default: the task's).", rich_help_panel=_DEC)] = None,
    device: Device = "auto",
    precision: Precision = "auto",
    batch_size: Annotated[int, typer.Option(help="Prompts per generation batch.")] = 64,
    json_out: Annotated[Optional[str], typer.Option("--json", help="Write results as JSON to FILE ('-' for stdout).", rich_help_panel=_OUT)] = None,
    markdown: Annotated[Optional[Path], typer.Option(help="Write the table as Markdown to FILE.", rich_help_panel=_OUT)] = None,
    samples: Annotated[Optional[Path], typer.Option(help="Write every generation as JSONL to FILE (prompt, completion, reference, scores).", rich_help_panel=_OUT)] = None,
    baseline: Baseline = None,
    threads: Threads = None,
    quiet: Quiet = False,
) -> None:
    """Evaluate one or more policies on the same prompts and print one table.

    [bold]Examples[/]

      rlgf eval --policy smollm2 --checkpoint runs/ppo/final --limit 200

      rlgf eval -c runs/ppo/final -c runs/d2lols/final --seeds 3 \\
        --markdown table.md

      rlgf eval -c runs/ppo/final -p openai:davinci-002 --limit 100 \\
        --samples gens.jsonl
    """
    from backends.errors import RlgfError

    from rlgf_cli.training.config import MAX_NEW_TOKENS
    from rlgf_cli.evaluation.decoding import check_decoding
    from rlgf_cli.evaluation.evaluate import run_eval
    from rlgf_cli.commands.progress import CountProgress
    from rlgf_cli.training.run import task_options

    from rlgf_cli.evaluation.paired import choose_baseline
    from rlgf_cli.runtime import use_threads

    specs = policy_specs(checkpoint, policy, quiet)
    against = choose_baseline(baseline, [str(c) for c in checkpoint or []], list(policy or []), specs)
    check_common(split, limit, batch_size)
    use_threads(threads)
    if seeds < 1:
        raise RlgfError(f"--seeds must be >= 1 (got {seeds})", "pass the number of seeds to average over")
    if max_new_tokens is not None and not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
        raise RlgfError(f"--max-new-tokens must be in [1, {MAX_NEW_TOKENS}] (got {max_new_tokens})",
                        "pass a length the model can generate")
    if guide_concurrency < 1 or guide_prompts_per_request < 1:
        raise RlgfError("--guide-concurrency and --guide-prompts-per-request must be at least 1",
                        "e.g. --guide-concurrency 8 --guide-prompts-per-request 1")
    options = dict(mode=decoding, temperature=temperature, top_k=top_k, top_p=top_p, num_beams=num_beams)
    check_decoding(**options)
    for option, path in (("--json", None if json_out == "-" else json_out), ("--markdown", markdown), ("--samples", samples)):
        if path:
            ensure_writable(path, option)

    report = run_eval(
        specs,
        task_name=task,
        split=split,
        limit=limit,
        seed=seed,
        seeds=seeds,
        reference_spec=reference,
        task_options=task_options(data=data, reward_model=reward_model, reward=reward, bertscore_model=bertscore_model,
                                  prompt_field=prompt_field, reference_field=reference_field, chat_template=chat_template,
                                  prompt_max_tokens=prompt_max_tokens,
                                  reward_label=reward_label, reward_url=reward_url,
                                  max_new_tokens=max_new_tokens),
        device=device,
        precision=precision,
        batch_size=batch_size,
        decoding=options,
        base_url=policy_base_url,
        api=dict(max_concurrency=guide_concurrency, prompts_per_request=guide_prompts_per_request,
                 extensions=guide_extensions),
        sample_scores=samples is not None,
        baseline=against,
        say=None if quiet else (lambda text: err_console.print(text, markup=False)),
        bar=None if quiet else CountProgress,
    )
    public = {
        "results": [{k: v for k, v in r.items() if k != "samples"} for r in report["results"]],
        "metric_names": report["metric_names"],
        "task_info": report["task_info"],
    }
    if json_out == "-":
        typer.echo(json.dumps(public, indent=2))
    elif not quiet:
        _print_table(public)  # shown before the files are written, so a failed write loses nothing
    outputs = []
    if json_out and json_out != "-":
        outputs.append((json_out, json.dumps(public, indent=2)))
    if markdown:
        outputs.append((markdown, eval_markdown(public)))
    if samples:
        lines = [json.dumps({"policy": res["policy"], **s}) for res in report["results"] for s in res["samples"]]
        outputs.append((samples, "\n".join(lines)))
    write_all(outputs)


def table_rows(report: dict) -> tuple[str, list[str], list[list[str]], int]:
    """The result table: its title, columns, rows and the first right-aligned (numeric) column.
    A decoding every policy shares goes into the title; only mixed decodings get a column."""
    from rlgf_cli.evaluation.report import fmt_mean_std, metric_columns, short_labels

    results = report["results"]
    labels = short_labels([r["policy"] for r in results])
    names = metric_columns((r["metrics"] for r in results), report.get("metric_names", ()))
    first = results[0]
    n_seeds = max(len(r.get("seeds", [0])) for r in results)
    shared = len({r["decoding"] for r in results}) == 1
    title = f"{first['task']} · {first['split']} split · n={first['n']}" + (f" · {first['decoding']}" if shared else "") \
        + (f" · {n_seeds} seeds (mean ± std)" if n_seeds > 1 else "")
    rows = []
    for r in results:
        std = r.get("metrics_std", {})
        rows.append([labels[r["policy"]], *([] if shared else [r["decoding"]]),
                     *[fmt_mean_std(r["metrics"].get(m), std.get(m)) for m in names]])
    return title, ["policy", *([] if shared else ["decoding"]), *names], rows, 1 if shared else 2


def eval_markdown(report: dict) -> str:
    from rlgf_cli.evaluation.report import markdown_table

    title, columns, rows, numeric = table_rows(report)
    lines = [f"## {title}", "", markdown_table(columns, rows, align_right_from=numeric), ""]
    paired = _paired(report)
    if paired:
        lines += [paired[0], "", "```", *(line.strip() for line in paired[1:]), "```", ""]
    for key, value in report.get("task_info", {}).items():
        if value is not None:  # unknown (a test accuracy never measured): nothing to say
            lines.append(f"- {key}: {_fact(value)}")
    return "\n".join(lines) + "\n"


def _paired(report: dict) -> list[str]:
    from rlgf_cli.evaluation.paired import paired_lines
    from rlgf_cli.evaluation.report import short_labels

    labels = short_labels([r["policy"] for r in report["results"]])
    return paired_lines(report["results"], labels.__getitem__)


def _fact(value) -> str:
    """A task fact as a reader writes it: ``train 9,987 · val 1,248 · test 1,248``, not a Python dict."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, dict):
        return " · ".join(f"{k} {_fact(v)}" for k, v in value.items() if v is not None)
    if isinstance(value, (list, tuple)):
        return ", ".join(_fact(v) for v in value if v is not None)
    return str(value)


def _print_table(report: dict) -> None:
    from rlgf_cli.commands.console import print_result_table

    title, columns, rows, numeric = table_rows(report)
    print_result_table(title, columns, rows, align_right_from=numeric)
    for line in _paired(report):
        out_console.print(line, markup=False, highlight=False)
    facts = []  # one caption: what is unknown (None) or was said before the table (the precision) is left out
    for key, value in report.get("task_info", {}).items():
        if value is None or key in ("precision", "precision_reason"):
            continue
        shown = ", ".join(f"{k} {v}" for k, v in value.items()) if isinstance(value, dict) else value
        facts.append(f"{key.replace('_', ' ')}: {shown}")
    if facts:
        err_console.print("; ".join(facts), markup=False)

"""``rlgf difficulty``: the paper's prompt-difficulty study (§6, Figure 3) as one command."""

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from rlgf_cli.commands.options import (BertscoreModel, CheckpointTask, Data, Device, Precision, PromptField, PromptMaxTokens, ChatTemplate, Quiet, ReferenceField, Threads,
                                       Reward, RewardLabel, RewardModel, RewardUrl)
from rlgf_cli.commands.console import err_console, handle_errors, out_console
from rlgf_cli.files import check_png, ensure_writable, write_atomic
from rlgf_cli.commands.eval import Baseline

_BUCKETS = "Buckets"
_OUT = "Output"


@handle_errors
def difficulty_command(
    checkpoint: Annotated[Optional[list[Path]], typer.Option("--checkpoint", "-c", help="A checkpoint folder (repeatable).")] = None,
    policy: Annotated[Optional[list[str]], typer.Option("--policy", "-p", help="A policy spec, e.g. smollm2, hf:PATH or openai:MODEL (repeatable).")] = None,
    task: CheckpointTask = None,
    split: Annotated[str, typer.Option(help="train, val or test.")] = "test",
    limit: Annotated[Optional[int], typer.Option(help="Use only the first N examples of the split.")] = None,
    thresholds: Annotated[Optional[str], typer.Option(help="Cut points instead of terciles: 'T' (two buckets) or 'A,B' (three). A reward score (sentiment tasks, prompts with a reward): hard < A ≤ medium < B ≤ easy; a 'difficulty' column (prompts): easy < A ≤ medium < B ≤ hard.", rich_help_panel=_BUCKETS)] = None,
    unseen_at_least: Annotated[Optional[int], typer.Option(help="CommonGen: a prompt with at least N concepts never seen in training is hard. \\[default: 1]", rich_help_panel=_BUCKETS)] = None,
    seed: Annotated[int, typer.Option(help="Sampling seed (the first one with --seeds).")] = 0,
    seeds: Annotated[int, typer.Option(help="Run N sampling seeds (seed, seed+1, …) and report each bucket's mean ± std.")] = 1,
    reference: Annotated[Optional[str], typer.Option(help="Frozen model for output_perplexity, or none to skip it. Default: the checkpoint's initial learner, else the task's default learner (left out, with the reason, when it cannot load).")] = None,
    policy_base_url: Annotated[Optional[str], typer.Option(help="Server of the openai: policies. Default: $OPENAI_BASE_URL.")] = None,
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
    decoding: Annotated[Optional[str], typer.Option(help="task, greedy, sample or beam. \\[default: task]")] = None,
    max_new_tokens: Annotated[Optional[int], typer.Option(help="Continuation length (default: the task's).")] = None,
    device: Device = "auto",
    precision: Precision = "auto",
    batch_size: Annotated[int, typer.Option(help="Prompts per generation batch.")] = 32,
    json_out: Annotated[Optional[str], typer.Option("--json", help="Write the buckets as JSON to FILE ('-' for stdout).", rich_help_panel=_OUT)] = None,
    plot: Annotated[Optional[Path], typer.Option(help="Write a grouped bar chart (PNG) to FILE.", rich_help_panel=_OUT)] = None,
    metric: Annotated[Optional[str], typer.Option(help="Metric of the chart and the easy−hard gaps. \\[default: sentiment, else the task's first]", rich_help_panel=_OUT)] = None,
    baseline: Baseline = None,
    threads: Threads = None,
    quiet: Quiet = False,
) -> None:
    """Compare policies on easy, medium and hard prompts (paper §6, Figure 3).

    Sentiment tasks bucket prompts by the reward model's score of the prompt alone
    (terciles; a higher score is easier); CommonGen by concepts unseen in training;
    --task prompts by its rows' numeric 'difficulty' column (higher is harder), else by
    the reward of the prompt with an empty completion.

    [bold]Examples[/]

      rlgf difficulty -p smollm2 -c runs/ppo/final -c runs/d2lols/final \\
        --limit 300 --plot fig3.png

      rlgf difficulty -c runs/ppo/final --thresholds 0.3,0.7 --json buckets.json

      rlgf difficulty -c runs/ppo/final -c runs/ppopp/final --seeds 3 \\
        --plot fig3.png
    """
    from backends.errors import RlgfError, did_you_mean

    from rlgf_cli.commands.eval import check_common, policy_specs
    from rlgf_cli.training.config import MAX_NEW_TOKENS
    from rlgf_cli.evaluation.difficulty import parse_thresholds, run_difficulty
    from rlgf_cli.evaluation.decoding import check_decoding
    from rlgf_cli.training.run import task_options

    from rlgf_cli.evaluation.paired import choose_baseline
    from rlgf_cli.runtime import use_threads

    specs = policy_specs(checkpoint, policy, quiet)
    against = choose_baseline(baseline, [str(c) for c in checkpoint or []], list(policy or []), specs)
    check_common(split, limit, batch_size)
    use_threads(threads)
    if seeds < 1:
        raise RlgfError(f"--seeds must be >= 1 (got {seeds})", "pass the number of seeds to average over")
    cuts = parse_thresholds(thresholds) if thresholds is not None else None
    if unseen_at_least is not None and unseen_at_least < 1:
        raise RlgfError(f"--unseen-at-least must be >= 1 (got {unseen_at_least})", "pass a number of concepts")
    if max_new_tokens is not None and not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
        raise RlgfError(f"--max-new-tokens must be in [1, {MAX_NEW_TOKENS}] (got {max_new_tokens})",
                        "pass a length the model can generate")
    check_decoding(decoding)
    if plot is not None:
        check_png(plot, "--plot")
    if json_out and json_out != "-":
        ensure_writable(json_out, "--json")

    report = run_difficulty(
        specs,
        task_name=task, split=split, limit=limit, seed=seed, reference_spec=reference,
        task_options=task_options(data=data, reward_model=reward_model, reward=reward, bertscore_model=bertscore_model,
                                  prompt_field=prompt_field, reference_field=reference_field, chat_template=chat_template,
                                  prompt_max_tokens=prompt_max_tokens,
                                  reward_label=reward_label, reward_url=reward_url,
                                  max_new_tokens=max_new_tokens),
        device=device, precision=precision, batch_size=batch_size, decoding={"mode": decoding}, base_url=policy_base_url,
        thresholds=cuts, unseen_at_least=unseen_at_least, metric=metric, seeds=seeds, baseline=against,
        say=None if quiet else (lambda text: err_console.print(text, markup=False)),
        bar=None if quiet else _bar,
    )
    from rlgf_cli.evaluation.difficulty import default_plot_metric, gaps_for, metric_names
    from rlgf_cli.evaluation.difficulty import plot as draw

    chosen = metric or default_plot_metric(report)
    if chosen not in metric_names(report):
        known = metric_names(report)
        raise RlgfError(f"no metric '{chosen}' in the results", f"{did_you_mean(chosen, known)}choose one of: {', '.join(known)}")
    text = json.dumps(report, indent=2)
    if json_out == "-":
        typer.echo(text)
    elif not quiet:  # shown before the files are written, so a failed write loses nothing
        print_table(report, chosen, gaps_for(report, chosen))
    if json_out and json_out != "-":
        write_atomic(json_out, text)
    if plot is not None:
        draw(report, plot, chosen)
    if plot is not None and not quiet:
        err_console.print(f"chart: {plot}", markup=False)


def _bar(label: str):
    from rlgf_cli.commands.progress import CountProgress

    return CountProgress(label)


def print_table(report: dict, metric: str, gaps: dict) -> None:
    from rlgf_cli.evaluation.difficulty import metric_names
    from rlgf_cli.commands.console import print_result_table
    from rlgf_cli.evaluation.report import fmt_mean_std, short_labels

    names = metric_names(report)
    labels = short_labels(report["policies"])
    rows = []
    for bucket, info in report["buckets"].items():
        for j, (spec, metrics) in enumerate(info["policies"].items()):
            head = f"{bucket} (n={info['n']})" if j == 0 else ""
            stds = info.get("policies_std", {}).get(spec, {})
            rows.append([head, labels[spec], *[fmt_mean_std(metrics.get(m), stds.get(m)) for m in names]])
    how = report.get("description", report.get("method", ""))
    cuts = report.get("thresholds")
    if cuts:
        how += " · cut at " + ", ".join(f"{c:.4f}" for c in cuts)
    several = f" · {len(report['seeds'])} seeds (mean ± std)" if report.get("seeds") else ""
    title = f"{report['task']} · {report['split']} split · n={report['n']} · by difficulty{several}"
    print_result_table(title, ["bucket", "policy", *names], rows, align_right_from=2)
    from rlgf_cli.evaluation.paired import bucket_lines

    for line in bucket_lines(report["buckets"], labels.__getitem__):
        out_console.print(line, markup=False, highlight=False)
    err_console.print(how, markup=False)
    for spec, gap in gaps.items():
        if gap is not None:
            err_console.print(f"easy−hard {metric} gap · {labels[spec]}: {gap:+.4f}", markup=False)

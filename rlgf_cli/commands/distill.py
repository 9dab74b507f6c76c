"""``rlgf distill``: BC on a (black-box) guide's completions, optionally RLGF after, then a Table-3 report."""

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from rlgf_cli.commands.options import (BertscoreModel, Data, Device, Precision, PromptField, PromptMaxTokens, ChatTemplate, Quiet, ReferenceField, Threads,
                                       Reward, RewardLabel, RewardModel, RewardUrl, Task)
from rlgf_cli.commands.console import err_console, handle_errors

_GUIDE = "Guide and collection"
_BC = "Behaviour cloning"
_THEN = "Then (RLGF from the BC model)"
_EVAL = "Evaluation"


@handle_errors
def distill_command(
    guide: Annotated[str, typer.Option(help="Guide policy spec: openai:MODEL, a model spec or a checkpoint folder.", rich_help_panel=_GUIDE)],
    learner: Annotated[Optional[str], typer.Option(help="Learner spec (hf:NAME_OR_PATH, a folder, smollm2). Default: the task's.")] = None,
    task: Task = "rotten-tomatoes",
    out: Annotated[Optional[Path], typer.Option(help="Run folder (default: runs/distill-TASK).")] = None,
    samples_per_prompt: Annotated[int, typer.Option(help="Guide completions per training prompt.", rich_help_panel=_GUIDE)] = 4,
    prompts: Annotated[Optional[int], typer.Option(help="Use the first N training prompts. \\[default: all]", rich_help_panel=_GUIDE)] = None,
    keep_top: Annotated[Optional[int], typer.Option(help="Keep only the best K completions of each prompt by reward. \\[default: all of them]", rich_help_panel=_GUIDE)] = None,
    guide_budget_tokens: Annotated[int, typer.Option(help="Cap on the API guide's prompt + completion tokens for the whole command (cached completions are free); collection stops at it and BC goes on with what it has. 0: no cap.", rich_help_panel=_GUIDE)] = 0,
    guide_base_url: Annotated[Optional[str], typer.Option(help="OpenAI-compatible server of an openai: guide. Default: $OPENAI_BASE_URL.", rich_help_panel=_GUIDE)] = None,
    guide_price_per_1k: Annotated[Optional[float], typer.Option(help="USD per 1,000 guide tokens, for the cost report. \\[default: the backend's list price]", rich_help_panel=_GUIDE)] = None,
    concurrency: Annotated[int, typer.Option("--guide-concurrency", "--concurrency",
                                             help="Concurrent requests to an API guide (--guide-concurrency, as in "
                                                  "rlgf train; --concurrency is the older name).",
                                             rich_help_panel=_GUIDE)] = 8,
    bc_epochs: Annotated[float, typer.Option(help="Passes over the kept completions (sets the BC iterations).", rich_help_panel=_BC)] = 2.0,
    iterations: Annotated[Optional[int], typer.Option(help="BC iterations (overrides --bc-epochs).", rich_help_panel=_BC)] = None,
    episodes: Annotated[int, typer.Option(help="Examples per BC iteration.", rich_help_panel=_BC)] = 32,
    minibatch_size: Annotated[Optional[int], typer.Option(help="Examples per BC minibatch. \\[default: 16, at most --episodes]", rich_help_panel=_BC)] = None,
    lr: Annotated[Optional[float], typer.Option(help="BC learning rate. \\[default: 1e-5]", rich_help_panel=_BC)] = None,
    then: Annotated[Optional[str], typer.Option(help="Continue from the BC model with this algorithm and the same guide: ppo, ppo++, aggrevated, lols, d2lols.", rich_help_panel=_THEN)] = None,
    then_iterations: Annotated[Optional[int], typer.Option(help="Iterations of --then (default: the task's; 10 for rotten-tomatoes and prompts, 100 for imdb).", rich_help_panel=_THEN)] = None,
    then_config: Annotated[Optional[Path], typer.Option(help="TOML file with more `rlgf train` settings for --then (episodes, lr, beta…).", rich_help_panel=_THEN)] = None,
    eval_split: Annotated[str, typer.Option(help="Split of the final evaluation: train, val or test.", rich_help_panel=_EVAL)] = "test",
    eval_limit: Annotated[Optional[int], typer.Option(help="Evaluate on the first N examples only (default: all).", rich_help_panel=_EVAL)] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    device: Device = "auto",
    precision: Precision = "auto",
    batch_size: Annotated[int, typer.Option(help="Prompts per generation batch.")] = 32,
    max_new_tokens: Annotated[Optional[int], typer.Option(help="Continuation length (default: the task's).")] = None,
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
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run in --out.")] = False,
    json_out: Annotated[Optional[str], typer.Option("--json", help="Also write the report as JSON to FILE ('-' for stdout; OUT/report.json is always written).")] = None,
    threads: Threads = None,
    quiet: Quiet = False,
) -> None:
    """Distill a guide into the learner: collect its completions, BC on them, optionally RLGF, compare.

    The paper's black-box-guide experiment (§6): the guide is often an API model.
    Writes OUT/guide_samples.jsonl, OUT/bc/ (and OUT/ALG/ with --then), OUT/report.json
    and OUT/report.md (guide and learner side by side, like the paper's Table 3).

    [bold]Examples[/]

      rlgf serve --policy smollm2 --port 8000 &

      rlgf distill --guide openai:smollm2 \\
        --guide-base-url http://127.0.0.1:8000/v1 --prompts 200 \\
        --guide-budget-tokens 50000 --out runs/distill

      rlgf distill --guide openai:davinci-002 --keep-top 1 \\
        --samples-per-prompt 4 --then ppo++ --out runs/distill-gpt
    """
    from rlgf_cli.evaluation.distill import DistillOptions, distill
    from rlgf_cli.commands.progress import CountProgress, TrainProgress
    from rlgf_cli.files import ensure_writable, write_atomic
    from rlgf_cli.runtime import use_threads
    from rlgf_cli.training.run import task_options

    if json_out and json_out != "-":  # before the guide is paid for
        ensure_writable(json_out, "--json")
    use_threads(threads)
    options = DistillOptions(
        guide=guide, learner=learner, task=task, out=str(out or Path("runs") / f"distill-{task}"),
        samples_per_prompt=samples_per_prompt, prompts=prompts, keep_top=keep_top,
        guide_budget_tokens=guide_budget_tokens, guide_base_url=guide_base_url, guide_price_per_1k=guide_price_per_1k,
        concurrency=concurrency, bc_epochs=bc_epochs, iterations=iterations, episodes=episodes,
        minibatch_size=minibatch_size or 0, lr=lr, then=then, then_config=str(then_config) if then_config else None,
        then_iterations=then_iterations, eval_split=eval_split, eval_limit=eval_limit, seed=seed, device=device,
        precision=precision, batch_size=batch_size, max_new_tokens=max_new_tokens, overwrite=overwrite,
        task_options=task_options(data=data, reward_model=reward_model, reward=reward, bertscore_model=bertscore_model,
                                  prompt_field=prompt_field, reference_field=reference_field, chat_template=chat_template,
                                  prompt_max_tokens=prompt_max_tokens,
                                  reward_label=reward_label, reward_url=reward_url),
    )
    progress = TrainProgress(quiet=quiet)
    try:
        report = distill(options, callback=progress, bar=lambda label: CountProgress(label, quiet=quiet))
    finally:
        progress.close()
    if json_out == "-":
        typer.echo(json.dumps(report, indent=2))
    elif json_out:
        write_atomic(json_out, json.dumps(report, indent=2))
    if json_out != "-" and not quiet:
        from rlgf_cli.evaluation.distill_report import facts, table
        from rlgf_cli.commands.console import print_result_table

        columns, rows = table(report, short=True)
        title = f"{report['task']} · {report['split']} split · n={report['n']} · guide vs learner"
        print_result_table(title, columns, rows, align_right_from=3)
        for line in facts(report):
            err_console.print(line.removeprefix("- ").replace("**", ""), markup=False)
        err_console.print(f"report: {Path(report['out']) / 'report.md'}", markup=False)

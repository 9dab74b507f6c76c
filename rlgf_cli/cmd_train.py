"""``rlgf train``: flags → TrainConfig → :func:`rlgf_cli.run.train`."""

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from .console import err_console, handle_errors
from .files import ensure_writable, write_atomic

_PPO = "PPO hyperparameters (paper Table 5 defaults)"
_RUN = "Run"


@handle_errors
def train_command(
    task: Annotated[Optional[str], typer.Option(help="Task name (see `rlgf tasks`). Default: rotten-tomatoes.")] = None,
    alg: Annotated[Optional[str], typer.Option(help="Algorithm: ppo, ppo++ (ppopp), aggrevated, lols, d2lols or bc. [default: ppo]")] = None,
    learner: Annotated[Optional[str], typer.Option(help="Learner spec: hf:NAME_OR_PATH, a folder, or smollm2. Default: the task's.")] = None,
    guide: Annotated[Optional[str], typer.Option(help="Guide policy spec for ppo++/aggrevated/lols/d2lols: a model spec or checkpoint folder.")] = None,
    beta: Annotated[Optional[float], typer.Option(help="Mixing probability β. [default: PPO++ 0.2, AggreVaTeD 0.8]", rich_help_panel="Guided algorithms (paper Table 6 defaults)")] = None,
    alpha: Annotated[Optional[float], typer.Option(help="LOLS advantage mix / D2LOLS switch fraction α. [default: 0.8]", rich_help_panel="Guided algorithms (paper Table 6 defaults)")] = None,
    guide_base_url: Annotated[Optional[str], typer.Option(help="OpenAI-compatible server for an openai: guide (vLLM, llama.cpp, `rlgf serve`…). Default: $OPENAI_BASE_URL.", rich_help_panel="Guided algorithms (paper Table 6 defaults)")] = None,
    guide_budget_tokens: Annotated[Optional[int], typer.Option(help="Stop cleanly (with a checkpoint) before the API guide spends more than N prompt+completion tokens.", rich_help_panel="Guided algorithms (paper Table 6 defaults)")] = None,
    guide_price_per_1k: Annotated[Optional[float], typer.Option(help="USD per 1,000 guide tokens, for the cost report.", rich_help_panel="Guided algorithms (paper Table 6 defaults)")] = None,
    init: Annotated[Optional[str], typer.Option(help="Warm-start the learner from this spec or checkpoint folder.")] = None,
    data: Annotated[Optional[str], typer.Option(help="Task data file or folder (default: the task's own source).")] = None,
    reward_model: Annotated[Optional[str], typer.Option(help="Reward classifier folder (sentiment tasks).")] = None,
    reward: Annotated[Optional[str], typer.Option(help="Reward: a task's named reward (e.g. cider_d, spider) or module:function.")] = None,
    bertscore_model: Annotated[Optional[str], typer.Option(help="BERTScore model name or folder (CommonGen).")] = None,
    iterations: Annotated[Optional[int], typer.Option(help="Training iterations. [default: 10]", rich_help_panel=_RUN)] = None,
    episodes: Annotated[Optional[int], typer.Option(help="Episodes (prompts) per iteration. [default: 64]", rich_help_panel=_RUN)] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed; the same seed gives the same run on CPU. [default: 0]", rich_help_panel=_RUN)] = None,
    out: Annotated[Optional[str], typer.Option(help="Run folder. [default: runs/TASK-ALG-seedN]", rich_help_panel=_RUN)] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu, cuda or cuda:N. [default: auto]", rich_help_panel=_RUN)] = None,
    config: Annotated[Optional[Path], typer.Option(help="TOML file with any of these settings; flags override it.", rich_help_panel=_RUN)] = None,
    save_every: Annotated[Optional[int], typer.Option(help="Checkpoint every N iterations (0: only the final one). [default: 1]", rich_help_panel=_RUN)] = None,
    max_new_tokens: Annotated[Optional[int], typer.Option(help="Continuation length (default: the task's).", rich_help_panel=_RUN)] = None,
    rollout_batch_size: Annotated[Optional[int], typer.Option(help="Episodes per generation chunk; 0 sizes it to the device (what fits in a GPU's free memory; 64 on CPU). [default: 0]", rich_help_panel=_RUN)] = None,
    cuda_graphs: Annotated[Optional[bool], typer.Option("--cuda-graphs/--no-cuda-graphs", help="Experimental: replay each decoding step of a causal model as a CUDA graph (GPU only; falls back with a warning where capture fails). [default: off]", rich_help_panel=_RUN)] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run in --out.", rich_help_panel=_RUN)] = False,
    resume: Annotated[Optional[Path], typer.Option(help="Continue the run in this folder from its latest checkpoint (flags such as --iterations or --guide-budget-tokens override its config).", rich_help_panel=_RUN)] = None,
    lr: Annotated[Optional[float], typer.Option(help="Learning rate. [default: 1e-6; BC 1e-5]", rich_help_panel=_PPO)] = None,
    epochs: Annotated[Optional[int], typer.Option(help="PPO epochs per iteration. [default: 5]", rich_help_panel=_PPO)] = None,
    minibatch_size: Annotated[Optional[int], typer.Option(help="Episodes per minibatch. [default: 16, at most --episodes]", rich_help_panel=_PPO)] = None,
    gamma: Annotated[Optional[float], typer.Option(help="Discount γ. [default: 0.99]", rich_help_panel=_PPO)] = None,
    lam: Annotated[Optional[float], typer.Option(help="GAE λ. [default: 0.95]", rich_help_panel=_PPO)] = None,
    clip_range: Annotated[Optional[float], typer.Option(help="Policy ratio clip ε. [default: 0.2]", rich_help_panel=_PPO)] = None,
    clip_range_value: Annotated[Optional[float], typer.Option(help="Value clip. [default: 0.2]", rich_help_panel=_PPO)] = None,
    vf_coef: Annotated[Optional[float], typer.Option(help="Value-loss coefficient. [default: 0.5]", rich_help_panel=_PPO)] = None,
    ent_coef: Annotated[Optional[float], typer.Option(help="Entropy bonus. [default: 0]", rich_help_panel=_PPO)] = None,
    kl_coef: Annotated[Optional[float], typer.Option(help="Initial KL-penalty coefficient. [default: 0.1]", rich_help_panel=_PPO)] = None,
    target_kl: Annotated[Optional[float], typer.Option(help="Target KL of the adaptive controller (0: fixed). [default: 0.1]", rich_help_panel=_PPO)] = None,
    max_grad_norm: Annotated[Optional[float], typer.Option(help="Gradient clipping norm. [default: 1.0]", rich_help_panel=_PPO)] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
    json_out: Annotated[Optional[str], typer.Option("--json", help="Write the run summary as JSON to FILE ('-' for stdout).")] = None,
) -> None:
    """Train a learner on a task.

    [bold]Examples[/]

      rlgf train --task rotten-tomatoes --alg ppo --iterations 20 --episodes 32 --out runs/ppo

      rlgf train --alg bc --iterations 50 --lr 1e-5 --out runs/bc

      rlgf train --alg d2lols --guide runs/bc/final --out runs/d2lols

      rlgf train --alg ppo++ --guide openai:davinci-002 --guide-budget-tokens 200000

      rlgf train --config my.toml --seed 3

      rlgf train --resume runs/ppo --iterations 40

    Writes OUT/metrics.jsonl (one line per iteration), OUT/config.toml (the resolved
    config), OUT/checkpoints/iter-NNNN/ (resumable: model, critic, optimizer and RNG state;
    the last iteration's is always kept), OUT/final/ (what you ship: a plain transformers
    folder with the critic beside it) and OUT/summary.json.
    """
    from .config import build_config
    from .progress import TrainProgress
    from .run import train

    if resume is not None:
        from backends.errors import RlgfError

        if config is not None or out is not None:
            raise RlgfError("--resume takes its settings and folder from the run", "drop --config/--out, or start a new run")
        config = resume / "config.toml"
        if not config.is_file():
            raise RlgfError(f"{resume} holds no rlgf run (config.toml missing)", "pass the --out folder of an earlier run")
        from .config import load_toml
        from .run import latest_checkpoint

        saved = load_toml(config)
        if not {"task", "alg"} <= set(saved):  # rlgf always writes both: the file was emptied
            kept = latest_checkpoint(resume)
            hint = f"copy the one saved with the checkpoint: cp {kept / 'rlgf.toml'} {config}" if kept else \
                "start the run again with --overwrite"
            raise RlgfError(f"{config} is empty or damaged (no task or alg), so the run's settings are unknown", hint)
        from .config import normalise_alg

        for flag, given, was in (("--alg", alg and normalise_alg(alg), saved["alg"]), ("--task", task, saved["task"])):
            if given is not None and given != was:
                raise RlgfError(f"--resume continues the run's {flag} {was}, not {given}",
                                f"drop {flag}, or start a new run warm-started from this one with --init {resume}/final")
        out = str(resume)
    cfg = build_config(
        str(config) if config else None,
        task=task, alg=alg, learner=learner, guide=guide, beta=beta, alpha=alpha, init=init,
        guide_base_url=guide_base_url, guide_budget_tokens=guide_budget_tokens, guide_price_per_1k=guide_price_per_1k, data=data, reward_model=reward_model, reward=reward, bertscore_model=bertscore_model,
        iterations=iterations, episodes=episodes, seed=seed, out=out, device=device,
        save_every=save_every, max_new_tokens=max_new_tokens, rollout_batch_size=rollout_batch_size,
        cuda_graphs=cuda_graphs,
        lr=lr, epochs=epochs, minibatch_size=minibatch_size, gamma=gamma, lam=lam,
        clip_range=clip_range, clip_range_value=clip_range_value, vf_coef=vf_coef, ent_coef=ent_coef,
        kl_coef=kl_coef, target_kl=target_kl, max_grad_norm=max_grad_norm,
    )
    if json_out and json_out != "-":
        ensure_writable(json_out, "--json")
    if cfg.guide and cfg.alg in ("ppo", "bc"):  # not an error: a config file may set a guide for later runs
        err_console.print(f"warning: --alg {cfg.alg} does not use a guide; --guide {cfg.guide} is ignored "
                          "(ppo++, aggrevated, lols and d2lols use one)", markup=False)
    progress = TrainProgress(quiet=quiet)
    try:
        summary = train(cfg, overwrite=overwrite, resume=resume is not None, callback=progress)
    finally:
        progress.close()
    text = json.dumps(summary, indent=2)
    if json_out == "-":
        typer.echo(text)
    elif json_out:
        write_atomic(json_out, text)
    if summary.get("stopped"):
        err_console.print(f"stopped early: {summary['stopped']}; checkpoint in {summary['final']}", markup=False)
    if not quiet:
        last = summary.get("last", {})
        reward = f", last reward {last['reward_mean']:.3f}" if "reward_mean" in last else ""
        err_console.print(
            f"done: {summary['iterations']} iterations in {summary['seconds']:.0f}s{reward}; final model in {summary['final']}",
            markup=False,
        )


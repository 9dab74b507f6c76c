"""``rlgf train``: flags → TrainConfig → :func:`rlgf_cli.training.run.train`."""

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from rlgf_cli.commands.options import Quiet, Threads, with_config_options
from rlgf_cli.training.algorithms import get as get_algorithm, names as algorithm_names
from rlgf_cli.training.config import PANEL_RUN, build_config
from rlgf_cli.commands.console import count, err_console, handle_errors
from rlgf_cli.files import ensure_writable, write_atomic


@handle_errors
@with_config_options()
def train_command(
    *,
    config: Annotated[Optional[Path], typer.Option(help="TOML file with any of these settings; flags override it.", rich_help_panel=PANEL_RUN)] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run in --out.", rich_help_panel=PANEL_RUN)] = False,
    resume: Annotated[Optional[Path], typer.Option(help="Continue the run in this folder from its latest checkpoint (flags such as --iterations or --guide-budget-tokens override its config).", rich_help_panel=PANEL_RUN)] = None,
    print_config: Annotated[bool, typer.Option("--print-config", help="Print the resolved configuration as TOML (what OUT/config.toml gets) and exit, loading nothing.", rich_help_panel=PANEL_RUN)] = False,
    quiet: Quiet = False,
    json_out: Annotated[Optional[str], typer.Option("--json", help="Write the run summary as JSON to FILE ('-' for stdout).")] = None,
    threads: Threads = None,
    **options: Any,
) -> None:
    """Train a learner on a task.

    [bold]Examples[/]

      rlgf train --task rotten-tomatoes --alg ppo --iterations 20 \\
        --episodes 32 --out runs/ppo

      rlgf train --alg bc --iterations 50 --lr 1e-5 --out runs/bc

      rlgf train --alg d2lols --guide runs/bc/final --out runs/d2lols

      rlgf train --alg ppo++ --guide openai:davinci-002 \\
        --guide-budget-tokens 200000

      rlgf train --config my.toml --seed 3

      rlgf train --resume runs/ppo --iterations 40

      rlgf train --config my.toml --alg bc --print-config

    Writes OUT/metrics.jsonl (one line per iteration), OUT/config.toml (the resolved
    config), OUT/checkpoints/iter-NNNN/ (resumable: model, critic, optimizer and RNG state;
    the last iteration's is always kept), OUT/final/ (what you ship: a plain transformers
    folder with the critic beside it) and OUT/summary.json; with --log-to tensorboard also
    OUT/tensorboard/ (tensorboard --logdir runs).
    """
    if resume is not None:
        if overwrite:
            from backends.errors import RlgfError

            raise RlgfError(f"--resume and --overwrite contradict each other: --resume continues the run in {resume}, "
                            "--overwrite would delete it", f"drop --overwrite to continue it, or drop --resume and "
                            f"pass --out {resume} --overwrite to start it again")
        config = resume_settings(resume, config, options)
    cfg = build_config(str(config) if config else None, **options)
    from rlgf_cli.runtime import use_threads

    use_threads(threads)  # not a setting of the run: a resume may use another count
    if print_config:  # the task's name is checked (cheaply); no model or data is loaded
        from tasks import task_class

        task_class(cfg.task)
        typer.echo(cfg.to_toml(), nl=False)
        return
    if json_out and json_out != "-":
        ensure_writable(json_out, "--json")
    for note in ignored_options(cfg):  # not errors: a shared config file may set them for other runs
        err_console.print(f"warning: {note}", markup=False)
    from rlgf_cli.commands.progress import TrainProgress
    from rlgf_cli.training.run import train

    progress = TrainProgress(quiet=quiet)
    try:
        summary = train(cfg, overwrite=overwrite, resume=resume is not None, callback=progress)
    finally:
        progress.close()
    from rlgf_cli.training.distributed import launched_as_main

    if not launched_as_main():  # torchrun: rank 0 reports, as it alone logs and writes checkpoints
        return
    text = json.dumps(summary, indent=2)
    if json_out == "-":
        typer.echo(text)
    elif json_out:
        write_atomic(json_out, text)
    if summary.get("stopped"):
        from rlgf_cli.training.run_folder import budget_resume_command

        err_console.print(f"stopped early: {summary['stopped']}; checkpoint in {summary['final']}; continue with "
                          f"{budget_resume_command(summary['out'])}", markup=False)
    if not quiet:
        last = summary.get("last", {})
        reward = f", last reward {last['reward_mean']:.3f}" if "reward_mean" in last else ""
        err_console.print(
            f"done: {count(summary['iterations'], 'iteration')} in {summary['seconds']:.0f}s{reward}; final model in {summary['final']}",
            markup=False,
        )



def ignored_options(cfg) -> list[str]:
    """What the chosen algorithm will not use of the options given (or what cannot take effect)."""
    alg, notes = cfg.algorithm, []
    if cfg.guide and not alg.needs_guide:
        notes.append(f"--alg {cfg.alg} does not use a guide; --guide {cfg.guide} is ignored "
                     f"({', '.join(a for a in algorithm_names() if get_algorithm(a).needs_guide)} use one)")
    uses = {"alpha": alg.default_alpha is not None, "beta": len(alg.beta_schemes) == 1,
            "ppopp_beta": "ppo++" in alg.beta_schemes, "aggrevated_beta": "aggrevated" in alg.beta_schemes,
            "switch_iteration": alg.switches, "guide_temperature": alg.needs_guide, "guide_top_k": alg.needs_guide,
            "guide_top_p": alg.needs_guide}
    for name, used in uses.items():
        if not used and getattr(cfg, name) is not None:
            notes.append(f"--alg {cfg.alg} does not use --{name.replace('_', '-')}; it is ignored")
    if alg.switches and cfg.switch_iteration is not None and cfg.switch_iteration >= cfg.iterations:
        notes.append(f"--switch-iteration {cfg.switch_iteration} is not before --iterations {cfg.iterations}: "
                     f"{cfg.alg} never switches (it runs AggreVaTeD throughout)")
    return notes


#: settings a resumed run cannot change: its models, data, reward, random streams and schedule
FIXED_AT_START = ("learner", "init", "seed", "data", "reward", "reward_model", "reward_url", "reward_label",
                  "prompt_field", "reference_field", "chat_template", "alpha", "switch_iteration")


def run_default(saved: dict, name: str) -> Any:
    """The value a run whose ``config.toml`` left ``name`` unset used: the task's training
    default, else rlgf's, else the task's own (its default learner, its constructor's default,
    e.g. ``--chat-template auto``); ``None`` where there is none (it went without)."""
    from dataclasses import MISSING, fields

    from backends.errors import RlgfError
    from rlgf_cli.training.config import TrainConfig, task_defaults

    defaults = task_defaults(saved.get("task"), saved.get("alg"))
    if name in defaults:
        return defaults[name]
    field = next((f for f in fields(TrainConfig) if f.name == name), None)
    if field is not None and field.default not in (None, MISSING):
        return field.default
    from tasks.registry import option_default, task_class

    try:
        cls = task_class(str(saved.get("task")))
    except RlgfError:
        return None
    return cls.default_learner if name == "learner" else option_default(cls, name)


def _restore_hint(resume: Path, saved_file: Path) -> str:
    from rlgf_cli.training.run_folder import latest_checkpoint

    kept = latest_checkpoint(resume)
    return f"copy the one saved with the checkpoint: cp {kept / 'rlgf.toml'} {saved_file}" if kept else \
        f"it has no checkpoint to resume: delete {resume} and start the run again"


#: the run's files that a resume reads again (the models come from its checkpoint)
READ_AGAIN = ("data", "reward", "reward_model")


def _gone(name: str, value: Any) -> Optional[str]:
    """The local file or folder that a run's recorded ``name`` (a path field) names, where it no
    longer exists; ``None`` for one that exists or for a hub name, a model spec, a module."""
    if not isinstance(value, str) or (name == "data" and value.startswith("hf:")):
        return None
    rest = value[3:] if value.startswith("hf:") else value
    if name == "reward":  # FILE.py:FUNCTION
        file, sep, _ = rest.rpartition(":")
        rest = file if sep and file.endswith(".py") else ""
    path = Path(rest).expanduser()
    return str(path) if rest and path.is_absolute() and not path.exists() else None


def resume_settings(resume: Path, config: Optional[Path], options: dict) -> Path:
    """The config file of the run in ``resume``; checks the flags against it and points
    ``options["out"]`` at the run."""
    from backends.errors import RlgfError

    from rlgf_cli.training.config import PATH_FIELDS, load_toml, local_path, normalise_alg

    if config is not None or options.get("out") is not None:
        raise RlgfError("--resume takes its settings and folder from the run", "drop --config/--out, or start a new run")
    saved_file = resume / "config.toml"
    if not saved_file.is_file():
        raise RlgfError(f"{resume} holds no rlgf run (config.toml missing)", "pass the --out folder of an earlier run")
    try:
        saved = load_toml(saved_file)
    except RlgfError as exc:  # its hint is about --config, which a resume does not take
        raise RlgfError(f"{exc.message}; the run's settings are unknown", _restore_hint(resume, saved_file)) from None
    if not {"task", "alg"} <= set(saved):  # rlgf always writes both: the file was emptied
        raise RlgfError(f"{saved_file} is empty or damaged (no task or alg), so the run's settings are unknown",
                        _restore_hint(resume, saved_file))
    alg = options.get("alg")
    for flag, given, was in (("--alg", alg and normalise_alg(alg), saved["alg"]), ("--task", options.get("task"), saved["task"])):
        if given is not None and given != was:
            raise RlgfError(f"--resume continues the run's {flag} {was}, not {given}",
                            f"drop {flag}, or start a new run warm-started from this one with --init {resume}/final")
    for name in FIXED_AT_START:  # what the run's state was built from: a change would not take, or break it
        given, was = options.get(name), saved.get(name)
        gone = _gone(name, was) if name in READ_AGAIN else None
        if gone is not None:  # moved (or deleted) since: it may be named at its new place
            flag = "--" + name.replace("_", "-")
            if given is None:
                raise RlgfError(f"the run's {flag} {was} is gone ({gone} no longer exists)",
                                f"put it back there, or pass {flag} with the same file's new place")
            err_console.print(f"note: the run's {flag} {was} is gone; it continues with {given} (the same file, moved: "
                              "another one would change what the rest of the run trains on)", markup=False)
            continue
        default = run_default(saved, name) if was is None and given is not None else None
        if name in PATH_FIELDS and isinstance(given, str) and isinstance(was, str):  # the same file, however named
            given, was = local_path(name, given), local_path(name, was)
        if given is not None and given != was and given != default:  # the default it used may be named
            flag = "--" + name.replace("_", "-")
            then = str(was) if was is not None else "its default" if default is None else f"its default, {default}"
            raise RlgfError(f"--resume continues the run with its own {flag} ({then}), not {given}",
                            f"drop {flag}, or start a new run warm-started from this one with --init {resume}/final")
    if "lr" not in saved and options.get("lr") is None:
        # written before config.toml recorded the algorithm's learning rate: the one the run trained
        # with, not a task default that came later (--task prompts: 1e-6, then 5e-5)
        from rlgf_cli.training import algorithms

        options["lr"] = algorithms.get(saved["alg"]).default_lr
    options["out"] = str(resume)
    return saved_file

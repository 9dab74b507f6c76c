"""Reproduce the shape of the paper's Table 1 (and Table 7's BC+ rows) on the embedded default.

First BC on the task's references makes the guide (once, seed 0: the guide is a given policy,
as in the paper), then per seed PPO, PPO++, AggreVaTeD, LOLS and D2LOLS from the initial
learner with the BC policy as guide, and BC+PPO / BC+PPO++ (the learner warm-started from the
BC policy). Every policy, the initial learner and the guide included, is evaluated on the same
test prompts at every seed; ``results.md`` / ``results.json`` hold mean ± std over seeds, the
guide's own scores beside the learners', and ``curves.png`` the learning curves (mean reward
per iteration, ± one std over seeds). Every algorithm uses the same hyperparameters; with
``--lr-grid`` the learning rate is first chosen on the *validation* split (PPO, its own seed),
never on the test split. The work is split into jobs (see ``reproduce_jobs.py``) that
``--jobs`` runs side by side.

    # seconds: tiny models (the test suite)
    python bench/reproduce.py --preset tiny --learner DIR --reward-model DIR --out runs/repro-tiny
    # the committed CPU run (2 cores): 3 seeds
    python bench/reproduce.py --preset cpu --seeds 3 --jobs 2 --lr-grid 5e-5,2e-4 \
        --out bench/results/rotten-tomatoes-cpu
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import reproduce_jobs  # noqa: E402
from reproduce_jobs import (EXTRA_ROWS, GIVEN_GUIDE, GUIDE_SEED, REPLICATE_MAY_DIFFER, ROWS,  # noqa: E402
                            gather, guide_dir, merge_sources, plan, relative_paths, repeated_sources, result_file,
                            run_job, schedule, seed_range, serve_jobs)
from reproduce_difficulty import gather_rewards  # noqa: E402
from reproduce_difficulty import section as by_difficulty  # noqa: E402
from reproduce_report import write_results  # noqa: E402
from reproduce_options import OWN_SETTINGS, PRESETS, check_args, row_options, setting  # noqa: E402,F401
from reproduce_options import make_parser as _make_parser  # noqa: E402
from reproduce_options import parse_args as _parse_args  # noqa: E402


def parse_args(argv=None):
    return _parse_args(argv, __doc__)


def make_parser() -> argparse.ArgumentParser:
    return _make_parser(__doc__)


def run_training(name: str, out: Path, args, seed: int, **overrides) -> Path:
    from rlgf_cli.training.config import build_config
    from rlgf_cli.training.run import train

    episodes = setting(args, "episodes")
    values = dict(
        task=args.task, learner=args.learner, device=args.device, seed=seed, out=str(out / name),
        iterations=setting(args, "iterations"), episodes=episodes, epochs=setting(args, "epochs"),
        minibatch_size=min(setting(args, "minibatch_size"), episodes), max_new_tokens=setting(args, "max_new_tokens"),
        lr=setting(args, "lr"), save_every=0, reward_model=args.reward_model, data=args.data, reward=args.reward,
        compile=bool(args.compile),  # eager unless asked: every committed run so far is eager
    )
    if overrides.get("alg") in ("ppo++", "aggrevated") and getattr(args, "beta", None) is not None:
        values["beta"] = args.beta  # LOLS and D2LOLS mix two phases, each with its own β; PPO has none
    if overrides.get("alg") in ("aggrevated", "lols", "d2lols") and getattr(args, "aggrevated_advantage", None):
        values["aggrevated_advantage"] = args.aggrevated_advantage
    values.update(overrides)
    started = time.perf_counter()
    summary = train(build_config(None, **values), overwrite=True)
    print(f"  trained {name:<16} seed {seed} in {time.perf_counter() - started:6.1f}s", flush=True)
    return Path(summary["out"])


def eval_task_options(args) -> dict:
    """The task options every evaluation of a reproduction uses (those its training runs record)."""
    options = {"max_new_tokens": setting(args, "max_new_tokens")}
    for name in ("reward_model", "data", "reward"):
        if getattr(args, name, None):
            options[name] = getattr(args, name)
    return options


def evaluate(policies: dict[str, str], args, seed: int, split: str = "test", seeds: int | None = None,
             rewards: dict | None = None) -> dict[str, dict]:
    """Metrics by row name at ``seed``; with ``seeds`` (one or more), ``{seed: metrics}`` by row
    name for seeds ``seed`` … ``seed + seeds - 1`` (one process, the models loaded and their
    reference perplexities computed once). A ``rewards`` dict receives each row's reward per
    prompt, ``{name: {seed: [reward of prompt 0, 1, …]}}`` (the prompt-difficulty table's input)."""
    from rlgf_cli.evaluation.evaluate import run_eval

    task_options = eval_task_options(args)
    limit = setting(args, "eval_limit")
    report = run_eval(
        list(dict.fromkeys(policies.values())), task_name=args.task, split=split, limit=limit, seed=seed,
        seeds=seeds or 1, reference_spec=args.learner, task_options=task_options, device=args.device,
        batch_size=min(128, limit),  # one batch: on a CPU, 128 rows decode 40 % faster than 4 batches of 32
        sample_scores=rewards is not None,
    )
    if rewards is not None:
        for name, spec in policies.items():
            samples = next(r["samples"] for r in report["results"] if r["policy"] == spec)
            by_seed: dict[str, list[float]] = {}
            for row in samples:  # in prompt order within each seed
                by_seed.setdefault(str(row.get("seed", seed)), []).append(row["scores"]["reward"])
            rewards[name] = by_seed
    if seeds and seeds > 1:
        by_spec = {r["policy"]: {run["seed"]: run["metrics"] for run in r["per_seed"]} for r in report["results"]}
    elif seeds:
        by_spec = {r["policy"]: {seed: r["metrics"]} for r in report["results"]}
    else:
        by_spec = {r["policy"]: r["metrics"] for r in report["results"]}
    return {name: by_spec[spec] for name, spec in policies.items()}


def train_bc(out: Path, args, seed: int, name: str = "bc") -> Path:
    return run_training(name, out, args, seed, alg="bc", lr=setting(args, "bc_lr"),
                        iterations=setting(args, "bc_iterations"), episodes=setting(args, "bc_episodes"),
                        minibatch_size=min(16, setting(args, "bc_episodes")))


def lr_trial(args, out: Path, lr: float, *, alg: str = "ppo", name: str | None = None, **row) -> dict:
    """PPO at one lr of the grid (seed 1000, not an evaluation seed), scored on the validation split;
    with ``--lr-per-row`` a row as it will be trained (``alg``, its ``guide``/``init`` and the row options)."""
    extra = {**row_options(args), **row} if name else {}
    run = run_training(name or f"ppo-lr{lr:g}", out, args, 1000, alg=alg, lr=lr, **extra)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    approx_kl = statistics.fmean(r.get("approx_kl", 0.0) for r in rows)
    val = evaluate({"trial": str(run / "final")}, args, 1000, split="val")["trial"]
    _drop_models(run, args)
    relative_paths(run)
    print(f"  lr {lr:g}: val {val} approx_kl {approx_kl:.4f}", flush=True)
    return {"lr": lr, "val": val, "approx_kl_mean": approx_kl,
            "kl_exact_last": rows[-1].get("kl_exact"), "reward_last": rows[-1].get("reward_mean")}


def choose_lr(args, trials: list[dict], out: Path, label: str | None = None) -> dict:
    """The best validation reward among the lrs whose mean approx_kl stays healthy; written to
    ``lr_choice.json`` (with ``label``, ``--lr-per-row``: that row's entry in it)."""
    metric = next(iter(trials[0]["val"]))
    healthy = [t for t in trials if t["approx_kl_mean"] <= args.max_approx_kl
               and (t.get("kl_exact_last") or 0.0) <= args.max_kl_per_token] or trials
    best = max(healthy, key=lambda t: t["val"][metric])
    choice = {"metric": metric, "trials": trials, "chosen": best["lr"]}
    out.mkdir(parents=True, exist_ok=True)
    path = out / "lr_choice.json"
    if label is not None:  # {"metric", "per_row": {label: choice}, "chosen": {label: lr}}, row by row
        whole = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        if "per_row" not in whole:
            whole = {"metric": metric, "per_row": {}, "chosen": {}}
        whole["per_row"][label] = choice
        whole["chosen"][label] = best["lr"]
        choice = whole
    tmp = path.with_suffix(".tmp")  # rewritten row by row: never leave it half-written
    tmp.write_text(json.dumps(choice, indent=2), encoding="utf-8")
    tmp.replace(path)
    return choice


def _drop_models(run: Path, args) -> None:
    """Keep metrics, configs and summaries; the models of 20+ runs would take tens of GB."""
    if args.keep_models:
        return
    for sub in ("final", "checkpoints"):
        shutil.rmtree(run / sub, ignore_errors=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.threads:  # a child of --jobs, or a run told its threads
        import torch

        torch.set_num_threads(args.threads)
    if args.collect:
        adopt_settings(args, Path(args.sources[0]) if args.sources else out)
    rows = chosen_rows(args)
    if args.guide_model:  # not a BC policy: the tables say "guide"
        reproduce_jobs.GUIDE = GIVEN_GUIDE
    jobs = plan(args, rows)
    if args.worker:  # a child of --jobs: the jobs its parent sends, one at a time
        return serve_jobs(args, out, jobs, setting(args, "lr"))
    if args.job is not None:  # one job alone
        job = next((j for j in jobs if j.name == args.job), None)
        if job is None:
            raise SystemExit(f"unknown job {args.job}")
        lr = setting(args, "lr")
        if args.lr_per_row and job.kind == "row":  # the rate its row's trials chose
            choice = lr_choices([out]) or {}
            if job.label not in (choice.get("chosen") or {}):
                raise SystemExit(f"--lr-per-row: no lr chosen for {job.label} in {out / 'lr-selection'} yet")
            lr = choice["chosen"][job.label]
        run_job(job, args, out, lr)
        return 0
    if args.collect:
        return collect(args, out, jobs)
    started = time.perf_counter()
    child_argv = [a for a in _without(argv, "--lr", "--threads", "--jobs")]
    choice_holder: dict = {}

    def on_lr_trials(trials: list[dict], label: str | None) -> float:
        if trials and label is not None:  # --lr-per-row
            choice_holder["choice"] = choose_lr(args, trials, out / "lr-selection", label)
            lr = choice_holder["choice"]["chosen"][label]
            print(f"learning rate chosen on the validation split for {label}: {lr:g}", flush=True)
            return lr
        if trials:
            choice_holder["choice"] = choose_lr(args, trials, out / "lr-selection")
            args.lr = choice_holder["choice"]["chosen"]
            print(f"learning rate chosen on the validation split: {args.lr:g}", flush=True)
        return setting(args, "lr")

    if not args.resume and any((out / "jobs").glob("*.json")):  # its results would be taken for this run's
        raise SystemExit(f"{out} holds a reproduction's results (jobs/): pass --resume to continue it (with its "
                         "settings), or choose a new --out")
    check_settings(out, args)
    kept = finished_jobs(out, jobs, seed_range(args)) if args.resume else {}
    print(f"{len(jobs)} jobs, {max(1, args.jobs)} at a time"
          + (f"; {len(kept)} kept from the interrupted run" if args.resume else ""), flush=True)
    done = schedule(jobs, args, out, _without(child_argv, "--resume"), on_lr_trials, finished=kept)
    meta = _meta(args, argv, args.seeds)
    meta["wall_s"] = time.perf_counter() - started
    if kept:
        meta["kept_jobs"] = sorted(kept)
    meta["job_seconds"] = {name: round(r.get("seconds", 0.0), 1) for name, r in done.items()}
    per_seed, runs_by_seed, used = gather(jobs, done, seed_range(args))
    write_results(out, per_seed, runs_by_seed, meta, choice_holder.get("choice"), by_difficulty(jobs, done, used),
                  gather_rewards(jobs, done, used))
    if not args.keep_models:
        shutil.rmtree(out / "guide" / "final", ignore_errors=True)
        shutil.rmtree(out / "guide" / "checkpoints", ignore_errors=True)
    print((out / "results.md").read_text(encoding="utf-8"))
    print(f"wrote {out / 'results.md'}, results.json, curves.png (and difficulty.png) in {time.perf_counter() - started:.0f}s")
    return 0


def chosen_rows(args) -> list[tuple[str, str, bool]]:
    """The rows to train: ``--rows`` (labels of ROWS and EXTRA_ROWS), else every row."""
    every = ROWS + EXTRA_ROWS
    if not args.rows:
        return ROWS + (EXTRA_ROWS if args.all_rows else [])
    labels = [x.strip() for x in args.rows.split(",") if x.strip()]
    unknown = [x for x in labels if x not in {label for label, _, _ in every}]
    if unknown or not labels:
        raise SystemExit(f"--rows: unknown row {', '.join(unknown) or '(none given)'}; "
                         f"choose from {', '.join(label for label, _, _ in every)}")
    return [row for row in every if row[0] in labels]


#: the options that change what a reproduction computes (not how many processes run it)
SETTINGS = ("preset", "task", "learner", "device", "lr", "lr_grid", "max_approx_kl", "max_kl_per_token", "bc_lr",
            "all_rows", "reward_model", "first_seed", "iterations", "episodes", "eval_limit", "bc_iterations",
            "compile", "rows", "guide_model", "beta", "data", "reward", "max_new_tokens", "aggrevated_advantage",
            "row_option", "lr_per_row")


def comparable(settings: dict) -> dict:
    """A settings.json's options as two runs are compared: an option it lacks (written before the
    option existed) as its default, and ``row_option`` as the settings it names (so order and
    spelling do not count)."""
    parser = make_parser()
    out = {**{k: parser.get_default(k) for k in SETTINGS}, **settings}
    out["row_option"] = row_options(argparse.Namespace(row_option=out.get("row_option"))) or None
    return out


def check_settings(out: Path, args) -> None:
    """Write ``OUT/settings.json``; with ``--resume``, first refuse an ``--out`` made with other
    settings (its finished jobs would not be this run's)."""
    mine = {k: getattr(args, k) for k in SETTINGS}
    path = out / "settings.json"
    if args.resume and path.is_file():
        theirs, now = comparable(json.loads(path.read_text(encoding="utf-8"))), comparable(mine)
        differ = sorted(k for k in SETTINGS if k in theirs and theirs[k] != now[k])
        if differ:
            raise SystemExit("--resume: " + ", ".join(f"{k} was {theirs[k]!r}, now {mine[k]!r}" for k in differ)
                             + f"; rerun with {out}'s settings, or use a new --out")
    path.write_text(json.dumps(mine, indent=2), encoding="utf-8")


def finished_jobs(out: Path, jobs, seeds: range) -> dict[str, dict]:
    """The results of ``jobs`` that ``out`` holds (``jobs/NAME.json``). The guide counts only
    with its model still there: the rows that need it load it; an evaluation made for every seed
    (the initial learner, the guide) only when it covers this run's ``seeds`` (a resume with more
    --seeds evaluates again)."""
    kept = {}
    for job in jobs:
        path = result_file(out, job.name)
        if not path.is_file() or (job.kind == "guide" and not (guide_dir(out) / "final").is_dir()):
            continue
        result = json.loads(path.read_text(encoding="utf-8"))
        if "per_seed" in result and not {str(s) for s in seeds} <= set(result["per_seed"]):
            continue
        kept[job.name] = result
    return kept


def _without(argv: list[str], *names: str) -> list[str]:
    """``argv`` less the named options (and the values of those that take one)."""
    flags = {o for action in make_parser()._actions if action.nargs == 0 for o in action.option_strings}
    kept, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in names:
            skip = a not in flags
            continue
        if any(a.startswith(n + "=") for n in names):
            continue
        kept.append(a)
    return kept


def _meta(args, argv: list[str], seeds: int) -> dict:
    rows = row_options(args)
    return {"task": args.task, "preset": args.preset, "seeds": seeds, "learner": args.learner,
            "command": "python bench/reproduce.py " + " ".join(a for a in argv if a != "--collect"),
            "date": datetime.date.today().isoformat(), "machine": _machine(),
            # with --lr-per-row no one lr: the rows' own are in the lr choice
            "settings": {k: None if k == "lr" and args.lr_per_row else setting(args, k) for k in PRESETS[args.preset]},
            "guide_seed": GUIDE_SEED,
            "first_seed": args.first_seed, **({"guide_model": args.guide_model} if args.guide_model else {}),
            **({"row_options": rows} if rows else {}), **({"lr_per_row": True} if args.lr_per_row else {})}


def adopt_settings(args, folder: Path) -> None:
    """``--collect``: label the tables with the options ``folder`` was run with (its settings.json).
    An option left at its default is taken from there (a default given explicitly cannot be told
    from one left out); one given otherwise is refused. A single folder lends its seeds and rows too."""
    path = folder / "settings.json"
    if not path.is_file():  # a folder from before settings.json: the command line says it all
        return
    theirs = json.loads(path.read_text(encoding="utf-8"))
    defaults = vars(parse_args(["--out", str(folder)]))
    adopt = {k: v for k, v in theirs.items() if k in SETTINGS
             and (k not in REPLICATE_MAY_DIFFER or (not args.sources and k in ("first_seed", "rows", "all_rows")))}

    def used(name, value, preset):  # a preset's number left out and the same number given are one
        return PRESETS.get(preset, {}).get(name) if value is None else value

    preset = theirs.get("preset", args.preset)
    differ = sorted(k for k, v in adopt.items() if getattr(args, k) != defaults[k]
                    and used(k, getattr(args, k), preset) != used(k, v, preset))
    if differ:
        raise SystemExit("--collect: " + ", ".join(f"{k} was {adopt[k]!r}, now {getattr(args, k)!r}" for k in differ)
                         + f"; leave those options out, or pass the values {folder} was run with")
    for k, value in adopt.items():
        if getattr(args, k) == defaults[k]:
            setattr(args, k, value)
    done = folder / "results.json"
    if not args.sources and args.seeds == defaults["seeds"] and done.is_file():  # the seeds it finished
        seeds = json.loads(done.read_text(encoding="utf-8")).get("seeds_done") or []
        if seeds and seeds == list(range(args.first_seed, args.first_seed + len(seeds))):
            args.seeds = len(seeds)


def lr_choices(sources: list[Path]) -> dict | None:
    """The learning-rate choice of the folders (``lr-selection/lr_choice.json``): the first
    folder's, or with ``--lr-per-row`` every folder's rows joined (replicates may train other rows)."""
    choices = [json.loads(f.read_text(encoding="utf-8")) for f in
               (s / "lr-selection" / "lr_choice.json" for s in sources) if f.is_file()]
    if not choices or "per_row" not in choices[0]:
        return choices[0] if choices else None
    joined = {"metric": choices[0]["metric"], "per_row": {}, "chosen": {}}
    for choice in choices:
        for key in ("per_row", "chosen"):
            joined[key] = {**choice.get(key, {}), **joined[key]}
    return joined


def collect(args, out: Path, jobs) -> int:
    """The tables from the jobs that finished; the wall time runs from the first result file
    written to the last (a lower bound: the first job's own time is not in it), unless the
    run wrote its own results for the same seeds (then its measured time, command and date stay).
    With ``--from``, the folders' own wall times summed, each folder's work once: a folder whose
    every job file another folder holds identically (given twice, a copy, or part of one) adds none."""
    sources = [Path(s) for s in args.sources or [out]]
    if args.sources:
        done, metas = merge_sources(sources, jobs)
    else:
        done = {j.name: json.loads(result_file(out, j.name).read_text(encoding="utf-8"))
                for j in jobs if result_file(out, j.name).is_file()}
    per_seed, runs_by_seed, used = gather(jobs, done, seed_range(args))
    if not per_seed:
        raise SystemExit(f"no finished job in {', '.join(map(str, sources))}")
    lr_choice = lr_choices(sources)
    if lr_choice and not isinstance(lr_choice["chosen"], dict):  # one lr for every row (not --lr-per-row)
        args.lr = lr_choice["chosen"]
    meta = _meta(args, sys.argv[1:], len(used))
    if args.sources:  # the wall time of the whole: the folders' own, summed, a repeated folder's work once
        repeated = repeated_sources(sources)
        meta.update(wall_s=sum(m.get("wall_s", 0.0) for i, m in enumerate(metas) if i not in repeated),
                    sources=[str(s) for s in sources], repeated_sources=[str(sources[i]) for i in repeated])
    else:
        stamps = [result_file(out, name).stat().st_mtime for name in done]
        meta.update(wall_s=max(stamps) - min(stamps))
        previous = _previous_meta(out)
        if previous.get("seeds_done", list(seed_range(args))) == used and "wall_s" in previous:
            # the run that finished measured its own: keep its clock, command, date and machine
            meta.update({k: previous[k] for k in ("wall_s", "command", "date", "machine") if k in previous})
    meta.update(seeds_done=used, job_seconds={name: round(r.get("seconds", 0.0), 1) for name, r in done.items()})
    write_results(out, per_seed, runs_by_seed, meta, lr_choice, by_difficulty(jobs, done, used),
                  gather_rewards(jobs, done, used))
    print((out / "results.md").read_text(encoding="utf-8"))
    return 0


def _previous_meta(out: Path) -> dict:
    try:
        return json.loads((out / "results.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _machine() -> str:
    import os

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, Python {platform.python_version()}"


if __name__ == "__main__":
    from backends.allocator import maybe_reexec

    maybe_reexec()  # tcmalloc, as `rlgf` itself runs (backends/allocator.py)
    sys.exit(main())

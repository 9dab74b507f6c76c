"""The reproduction's units of work and the scheduler that runs them on every core.

One job is one training run with the evaluation of its model, one learning-rate trial, the
guide's training, or the evaluation of the initial learner or of the guide (every seed in one
job: each is one model, so it is loaded and its reference perplexity computed once). Each
job writes ``jobs/NAME.json`` when it finishes, so an interrupted reproduction keeps what it
finished (``--collect`` turns those files into the tables). Jobs wait for what they need:
every RL row for the learning rate (all trials done; with ``--lr-per-row`` its own row's), the
guided and warm-started rows (and their own trials) and the guide's evaluations for the guide.
``--jobs N`` runs N at once in N long-lived worker processes, the cores shared among the jobs
running (small models use two cores better as two one-thread processes); the evaluations go
last, so the short jobs fill the end and no core idles long.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

#: (row label, algorithm, warm start from the BC policy)
ROWS = [("ppo", "ppo", False), ("ppo++", "ppo++", False), ("aggrevated", "aggrevated", False),
        ("lols", "lols", False), ("d2lols", "d2lols", False), ("BC+ppo", "ppo", True), ("BC+ppo++", "ppo++", True)]
EXTRA_ROWS = [("BC+aggrevated", "aggrevated", True), ("BC+lols", "lols", True), ("BC+d2lols", "d2lols", True)]
INITIAL, GUIDE = "initial learner", "BC (guide)"
#: the guide's label when ``--guide-model`` gives it (``GUIDE`` is then set to this)
GIVEN_GUIDE = "guide"
GUIDE_SEED = 0


@dataclass
class Job:
    name: str
    kind: str  # guide | lr | row | initial | guide-eval | difficulty
    seed: int = 0
    label: str = ""
    alg: str = ""
    warm: bool = False
    lr: float | None = None
    needs: set[str] = field(default_factory=set)  # "lr" and/or "guide"


def plan(args, rows) -> list[Job]:
    """Every job, in the order they are started when ready (dependencies first, evaluations last)."""
    jobs = [Job("guide", "guide", seed=GUIDE_SEED)]
    grid = [float(x) for x in (args.lr_grid or "").split(",") if x.strip()]
    if getattr(args, "lr_per_row", False):  # each row's own trials: the row itself at each rate
        jobs += [Job(f"lr-{slug(label)}-{lr:g}", "lr", seed=1000, label=label, alg=alg, warm=warm, lr=lr,
                     needs={"guide"} if alg != "ppo" or warm else set()) for label, alg, warm in rows for lr in grid]
    else:
        jobs += [Job(f"lr-{lr:g}", "lr", seed=1000, lr=lr) for lr in grid]
    row_jobs = []
    for seed in seed_range(args):
        for label, alg, warm in rows:
            needs = {"lr"} | ({"guide"} if alg != "ppo" or warm else set())
            row_jobs.append(Job(f"s{seed}-{slug(label)}", "row", seed=seed, label=label, alg=alg, warm=warm,
                                needs=needs))
    # longest first, so the short ones fill the end (a stable sort: seed order within a cost)
    jobs += sorted(row_jobs, key=lambda j: -COST.get(j.alg, 1.0))
    # the initial learner and the guide are one model each: one job evaluates every seed
    jobs.append(Job("initial", "initial", label=INITIAL))
    jobs.append(Job("guide-eval", "guide-eval", label=GUIDE, needs={"guide"}))
    jobs.append(Job("difficulty", "difficulty"))  # the test prompts' difficulty (paper Figure 3)
    return jobs


#: relative cost of a row's training (measured: LOLS rolls out with both models)
COST = {"lols": 1.3, "d2lols": 1.15, "aggrevated": 1.15, "ppo++": 1.05, "ppo": 1.0}


def slug(label: str) -> str:
    return label.replace("+", "_")


def guide_dir(out: Path) -> Path:
    return out / "guide"


def result_file(out: Path, name: str) -> Path:
    return out / "jobs" / f"{name}.json"


def run_job(job: Job, args, out: Path, lr: float) -> dict:
    """Do one job in this process and write its result file (the last step, so a killed job leaves none)."""
    import reproduce as R

    started = time.perf_counter()
    given = getattr(args, "guide_model", None)
    guide_final = str(given) if given else str(guide_dir(out) / "final")
    if job.kind == "guide":  # a given guide is used as it is
        result = {"given": guide_final} if given else {"run": str(R.train_bc(out, args, job.seed, name="guide"))}
    elif job.kind == "lr":
        if job.label:  # --lr-per-row: the row itself
            result = R.lr_trial(args, out / "lr-selection", job.lr, alg=job.alg, name=f"{slug(job.label)}-lr{job.lr:g}",
                                guide=guide_final if job.alg != "ppo" else None,
                                init=guide_final if job.warm else None)
        else:
            result = R.lr_trial(args, out / "lr-selection", job.lr)
    elif job.kind == "difficulty":
        from reproduce_difficulty import measure_prompts

        result = measure_prompts(args)
    elif job.kind in ("initial", "guide-eval"):
        spec = args.learner if job.kind == "initial" else guide_final
        rewards: dict = {}
        by_seed = R.evaluate({job.label: spec}, args, args.first_seed, seeds=args.seeds, rewards=rewards)[job.label]
        result = {"per_seed": {str(s): m for s, m in by_seed.items()}, "per_prompt": rewards[job.label]}
        if job.kind == "guide-eval" and not given:
            result["run"] = str(guide_dir(out))
    else:
        guided = job.alg != "ppo"
        run = R.run_training(slug(job.label), out / f"seed{job.seed}", args, job.seed, alg=job.alg, lr=lr,
                             guide=guide_final if guided else None, init=guide_final if job.warm else None,
                             **R.row_options(args))
        rewards = {}
        metrics = R.evaluate({job.label: str(run / "final")}, args, job.seed, rewards=rewards)[job.label]
        result = {"metrics": metrics, "run": str(run), "per_prompt": rewards[job.label][str(job.seed)]}
        R._drop_models(run, args)
    if result.get("run"):
        relative_paths(Path(result["run"]))
    result["seconds"] = time.perf_counter() - started
    result["pid"] = os.getpid()  # which worker ran it
    path = result_file(out, job.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2), encoding="utf-8")
    tmp.replace(path)
    print(f"  job {job.name:<18} done in {result['seconds']:6.1f}s", flush=True)
    return result


def relative_paths(run: Path) -> None:
    """A run's config.toml and summary.json name its models and data by absolute path (so the
    run resumes from any folder); a reproduction, which is committed, names those under the
    folder it ran from relative to it, so no machine's paths get into the repository."""
    here = str(Path.cwd().resolve()) + os.sep
    for name in ("config.toml", "summary.json"):
        path = run / name
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            if here in text:
                path.write_text(text.replace(here, ""), encoding="utf-8")


def schedule(jobs: list[Job], args, out: Path, argv: list[str], on_lr_trials,
             finished: dict[str, dict] | None = None) -> dict[str, dict]:
    """Run every job, ``args.jobs`` at a time; ``on_lr_trials(trials, label)`` returns the chosen lr
    once every trial has finished (or the preset's lr when there is no grid): one call for all
    rows (``label`` None), or with ``--lr-per-row`` one per row label, once that row's trials have.
    ``finished`` holds results by name of jobs not to run again (``--resume``). Returns results by name."""
    done: dict[str, dict] = {}
    per_row = any(j.kind == "lr" and j.label for j in jobs)
    chosen: dict[str | None, float] = {} if any(j.kind == "lr" for j in jobs) else {None: on_lr_trials([], None)}
    pending = [j for j in jobs if j.name not in (finished or {})]
    workers = [Worker(argv, out, i) for i in range(args.jobs)] if args.jobs > 1 else []

    def lr_of(job: Job) -> float | None:
        return chosen.get(job.label if per_row else None)

    def ready(job: Job) -> bool:
        if "lr" in job.needs and lr_of(job) is None:
            return False
        return "guide" not in job.needs or "guide" in done

    def finish(job: Job, result: dict) -> None:
        done[job.name] = result
        if job.kind != "lr":
            return
        key = job.label if per_row else None
        trials = [j for j in jobs if j.kind == "lr" and (j.label if per_row else None) == key]
        if key not in chosen and all(j.name in done for j in trials):
            chosen[key] = on_lr_trials([done[j.name] for j in trials], key)

    for job in jobs:
        if job.name in (finished or {}):
            finish(job, finished[job.name])
    try:
        while pending or any(w.job for w in workers):
            for worker in (w for w in workers if w.job is None):
                job = next((j for j in pending if ready(j)), None)
                if job is None:
                    break
                pending.remove(job)
                busy = sum(1 for w in workers if w.job) + 1
                threads = args.threads or max(1, (os.cpu_count() or 1) // max(1, min(args.jobs, busy + len(pending))))
                worker.start(job, lr_of(job), threads)
            if not workers:  # --jobs 1: in this process
                job = next((j for j in pending if ready(j)), None)
                if job is None:
                    raise SystemExit(f"jobs cannot start: {', '.join(j.name for j in pending)}")
                pending.remove(job)
                finish(job, run_job(job, args, out, lr_of(job)))
                continue
            if not any(w.job for w in workers):
                raise SystemExit(f"jobs cannot start: {', '.join(j.name for j in pending)}")
            for job, ok in wait_any(workers, timeout=1.0):
                path = result_file(out, job.name)
                if not ok or not path.is_file():
                    raise SystemExit(f"job {job.name} failed; see {out / 'logs' / f'{job.name}.log'}")
                finish(job, json.loads(path.read_text(encoding="utf-8")))
    finally:
        for worker in workers:
            worker.close()
    return done


class Worker:
    """One long-lived job process: torch, transformers and the task's modules are imported once
    for every job it runs (a fresh process per job spent about 10 s of each job on that)."""

    def __init__(self, argv: list[str], out: Path, index: int) -> None:
        self.job: Job | None = None
        (out / "logs").mkdir(parents=True, exist_ok=True)
        self.stderr = open(out / "logs" / f"worker-{index}.log", "w", encoding="utf-8")
        cmd = [sys.executable, str(Path(__file__).resolve().with_name("reproduce.py")), *argv, "--worker"]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
                                     text=True, bufsize=1)

    def start(self, job: Job, lr: float | None, threads: int) -> None:
        self.job = job
        self.proc.stdin.write(json.dumps({"job": job.name, "lr": lr, "threads": threads}) + "\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        if self.proc.poll() is None:
            if self.job is None:
                self.proc.stdin.close()  # the worker ends at the end of its input
                try:
                    self.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
            else:  # its job is discarded: no reason to let `rlgf train` finish the iteration (SIGTERM would)
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()


def wait_any(workers: list[Worker], timeout: float) -> list[tuple[Job, bool]]:
    """The jobs that ended within ``timeout`` seconds and whether each succeeded (a worker that
    died mid-job counts as that job failing)."""
    import select

    busy = {w.proc.stdout.fileno(): w for w in workers if w.job is not None}
    readable, _, _ = select.select(list(busy), [], [], timeout)
    ended = []
    for fd in readable:
        worker = busy[fd]
        line = worker.proc.stdout.readline()
        job, worker.job = worker.job, None
        ended.append((job, line.strip() == f"ok {job.name}"))
    return ended


def serve_jobs(args, out: Path, jobs: list[Job], default_lr: float) -> int:
    """A worker's loop: one JSON request a line on stdin, each job's output in its own log,
    ``ok NAME`` or ``failed NAME`` on stdout when it ends; ends with its input."""
    import gc
    import traceback

    import torch

    by_name = {j.name: j for j in jobs}
    report = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    for line in sys.stdin:
        request = json.loads(line)
        job = by_name[request["job"]]
        torch.set_num_threads(int(request["threads"]))
        with open(out / "logs" / f"{job.name}.log", "w", encoding="utf-8") as log:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            try:
                if request["lr"] is not None:
                    args.lr = request["lr"]  # the lr chosen on the validation split
                run_job(job, args, out, default_lr if args.lr is None else args.lr)
                status = "ok"
            except BaseException:  # noqa: BLE001 -- a failed job is reported, the worker goes on
                traceback.print_exc()
                status = "failed"
            sys.stdout.flush()
            sys.stderr.flush()
        gc.collect()
        report.write(f"{status} {job.name}\n")
    return 0


def seed_range(args) -> range:
    """The evaluation and training seeds of the rows: ``--first-seed`` … ``+ --seeds - 1``."""
    first = getattr(args, "first_seed", 0)
    return range(first, first + args.seeds)


def gather(jobs: list[Job], done: dict[str, dict], seeds: range) -> tuple[list[dict], list[dict], list[int]]:
    """Per seed (those with at least one finished row): metrics and run folders by row label."""
    per_seed, runs_by_seed, used = [], [], []
    labels = [j.label for j in jobs if j.kind == "row" and j.seed == seeds.start]
    paper = [label for label, _, _ in ROWS + EXTRA_ROWS]  # the tables keep the paper's row order
    order = [INITIAL, GUIDE] + sorted(labels, key=lambda x: paper.index(x) if x in paper else len(paper))
    fixed = {j.label: done[j.name] for j in jobs if j.kind in ("initial", "guide-eval") and j.name in done}
    for seed in seeds:
        mine = {j.label: done[j.name] for j in jobs if j.seed == seed and j.name in done and j.kind == "row"}
        for label, result in fixed.items():  # one job, every seed: this seed's metrics
            if str(seed) in result.get("per_seed", {}):
                mine[label] = {**result, "metrics": result["per_seed"][str(seed)]}
        if not mine:
            continue
        per_seed.append({label: mine[label]["metrics"] for label in order if label in mine})
        runs_by_seed.append({label: Path(mine[label]["run"]) for label in order if "run" in mine.get(label, {})})
        used.append(seed)
    return per_seed, runs_by_seed, used


def merge_sources(sources: list[Path], jobs: list[Job]) -> tuple[dict[str, dict], list[dict]]:
    """The finished jobs of several reproduction folders (replicates at other seeds, e.g. run
    with ``--first-seed``) as one: each row job from the folder that holds it, the per-seed
    evaluations of the initial learner and the guide joined. Refuses folders that are not
    replicates of one experiment: other settings, another chosen lr, or another guide (its
    training metrics, timings aside, must be identical). Also returns each folder's results.json."""
    done: dict[str, dict] = {}
    metas = []
    for source in sources:
        meta_file = source / "results.json"
        if not meta_file.is_file():
            raise SystemExit(f"{source} has no results.json: finish or --collect it first")
        metas.append(json.loads(meta_file.read_text(encoding="utf-8")))
        for job in jobs:
            path = result_file(source, job.name)
            if not path.is_file():
                continue
            result = json.loads(path.read_text(encoding="utf-8"))
            if job.name not in done:
                done[job.name] = result
            elif "per_seed" in result:  # the initial learner or the guide: one more folder's seeds
                earlier = done[job.name].get("per_seed", {})
                clash = sorted(k for k in set(earlier) & set(result["per_seed"]) if earlier[k] != result["per_seed"][k])
                if clash:
                    raise SystemExit(f"{source} evaluated {job.label} at seed {clash[0]} too, with other results: "
                                     "join folders run at other seeds (--first-seed)")
                joined = {key: {**done[job.name].get(key, {}), **result[key]}
                          for key in ("per_seed", "per_prompt") if key in result}
                done[job.name] = {**done[job.name], **joined}
            elif job.kind == "row" and result.get("metrics") != done[job.name].get("metrics"):
                raise SystemExit(f"{source} ran {job.label} at seed {job.seed} too, with other results: join "
                                 "folders run at other seeds (--first-seed)")
    for key, what in (("settings", "settings"), ("lr_choice", "learning rate")):
        values = [m.get(key) if key != "lr_choice" else (m.get(key) or {}).get("chosen") for m in metas]
        if key == "lr_choice" and all(isinstance(v, dict) for v in values):  # --lr-per-row: the rows they share
            shared = set.intersection(*(set(v) for v in values))
            values = [{k: v[k] for k in sorted(shared)} for v in values]
        if any(v != values[0] for v in values):
            raise SystemExit(f"these folders are not replicates: their {what} differ ({values})")
    # the options each was run with (settings.json): those every folder recorded, less the preset's numbers
    # (compared above as they were used, a preset's own value and the same value given being one)
    chosen = [experiment_of(source) for source in sources]
    resolved = set(metas[0].get("settings") or {})
    for key in sorted(set.intersection(*(set(c) for c in chosen)) - resolved):
        values = [c.get(key) for c in chosen]
        if any(v != values[0] for v in values):
            raise SystemExit(f"these folders are not replicates: their {key} differ ({values})")
    guides = [_guide_trace(source) for source in sources]
    if any(g != guides[0] for g in guides):
        raise SystemExit("these folders are not replicates: their guides trained differently (guide/metrics.jsonl)")
    return done, metas


def repeated_sources(sources: list[Path]) -> list[int]:
    """The positions in ``sources`` of folders whose work another of them holds: each of their
    job files (``jobs/*.json`` as written, timings and worker included) is in the other folder too,
    identical, so their wall time is already in the other's. A folder given twice, or a copy,
    counts at its first place; one holding part of another's jobs, not at all. The same results
    run again (other timings) are another folder's work, and count."""
    held = [{p.name: json.loads(p.read_text(encoding="utf-8")) for p in (s / "jobs").glob("*.json")} for s in sources]
    return [i for i, mine in enumerate(held) if mine and any(
        j != i and all(theirs.get(k) == v for k, v in mine.items()) and (len(theirs) > len(mine) or j < i)
        for j, theirs in enumerate(held))]


#: what a replicate may change: its seeds, which rows it trains, and how it ran (not what it computed)
REPLICATE_MAY_DIFFER = ("first_seed", "rows", "all_rows", "device", "compile", "lr_grid")


def experiment_of(out: Path) -> dict:
    """The options of ``out``'s run that define the experiment (its settings.json, less what a
    replicate may change); empty for a folder from before settings.json."""
    import reproduce as R

    path = out / "settings.json"
    chosen = R.comparable(json.loads(path.read_text(encoding="utf-8"))) if path.is_file() else {}
    return {k: v for k, v in chosen.items() if k not in REPLICATE_MAY_DIFFER}


def _guide_trace(out: Path) -> list[dict]:
    """The guide's training metrics less its timings: equal traces, the same guide."""
    path = guide_dir(out) / "metrics.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    return [{k: v for k, v in json.loads(line).items() if not k.startswith("time")} for line in lines if line.strip()]

"""Distilling a guide into the learner (paper §6, "GPT models as guide policies").

:func:`distill` runs the whole experiment in ``OUT``:

1. **Guide evaluation** — the guide on the evaluation split, first, so that its share of an
   API budget is known before anything else spends it.
2. **Collection** — ``samples_per_prompt`` completions of each training prompt (the task's
   training decoding; the first ``prompts`` of the train split, all by default), through
   the API backend's cache and concurrent requests. ``guide_budget_tokens`` caps the tokens
   the API guide is paid for in this run (completions served from the cache are free); when
   the next batch would pass it, collection stops and the run goes on with what it has
   (``collection.budget_exhausted`` and a message say so). Written to ``guide_samples.jsonl``.
3. **Filtering** — every completion is scored with the task's reward; with ``keep_top`` only
   the best ``keep_top`` completions of each prompt are kept.
4. **BC** — the learner is fine-tuned on the kept (prompt → completion) pairs
   (:class:`~rlgf_cli.training.bc.BCTrainer`), ``bc_epochs`` passes by default; ``OUT/bc/final``.
5. **Then** (optional) — ``rlgf train --alg ALG --init OUT/bc/final --guide GUIDE`` with what
   is left of the budget; ``OUT/ALG/``.
6. **Report** — guide, learner (zero-shot), learner + BC and learner + BC + ALG evaluated
   side by side on the evaluation split: ``report.json`` and ``report.md`` (paper Table 3).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from backends import policy_class
from backends.errors import RlgfError, RlgfWarning
from backends.openai_api.token_budget import GuideBudgetExhausted
from tasks.base import Example, Task, layered

from rlgf_cli.files import check_out_dir, clear_run
from rlgf_cli.training.trainer import _noop


@dataclass
class DistillOptions:
    guide: str
    learner: str | None = None
    task: str = "rotten-tomatoes"
    out: str = "runs/distill"
    samples_per_prompt: int = 4
    prompts: int | None = None
    keep_top: int | None = None
    guide_budget_tokens: int = 0
    guide_base_url: str | None = None
    guide_price_per_1k: float | None = None
    concurrency: int = 8
    bc_epochs: float = 2.0
    iterations: int | None = None
    episodes: int = 32
    minibatch_size: int = 0  # 0: 16, or --episodes when fewer
    lr: float | None = None
    then: str | None = None
    then_config: str | None = None
    then_iterations: int | None = None
    eval_split: str = "test"
    eval_limit: int | None = None
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    batch_size: int = 32
    max_new_tokens: int | None = None
    task_options: dict = field(default_factory=dict)
    overwrite: bool = False


class GuideDataTask(Task):
    """The layer :func:`with_guide_data` puts in front of a task's class: BC imitates the
    guide's completions; everything else is the task's own."""

    guide_examples: list[Example]

    def bc_examples(self) -> list[Example]:
        return list(self.guide_examples)


def with_guide_data(task: Task, examples: list[Example]) -> Task:
    """A copy of ``task`` (still an instance of its class) whose BC data is ``examples``."""
    return layered(task, GuideDataTask, guide_examples=list(examples))


def check_options(o: DistillOptions) -> None:
    def at_least(name: str, value, low) -> None:
        if value is not None and value < low:
            raise RlgfError(f"--{name} must be >= {low} (got {value})", f"pass a value >= {low}")

    at_least("samples-per-prompt", o.samples_per_prompt, 1)
    at_least("prompts", o.prompts, 1)
    at_least("keep-top", o.keep_top, 1)
    at_least("guide-budget-tokens", o.guide_budget_tokens, 0)
    at_least("guide-concurrency", o.concurrency, 1)
    at_least("eval-limit", o.eval_limit, 1)
    at_least("batch-size", o.batch_size, 1)
    at_least("then-iterations", o.then_iterations, 1)
    if not (o.bc_epochs > 0 and math.isfinite(o.bc_epochs)):
        raise RlgfError(f"--bc-epochs must be > 0 (got {o.bc_epochs})", "pass a positive number of passes")
    if o.keep_top is not None and o.keep_top > o.samples_per_prompt:
        raise RlgfError(f"--keep-top {o.keep_top} is more than --samples-per-prompt {o.samples_per_prompt}",
                        "keep at most as many completions as are collected per prompt")
    for flag, value in (("--then-iterations", o.then_iterations), ("--then-config", o.then_config)):
        if value is not None and not o.then:
            warnings.warn(f"{flag} is ignored without --then (which RL algorithm to continue with)", RlgfWarning,
                          stacklevel=2)
    if o.eval_split not in ("train", "val", "test"):
        raise RlgfError(f"unknown split '{o.eval_split}'", "use train, val or test")
    if (o.guide_budget_tokens or o.guide_base_url) and not policy_class(o.guide).remote:
        flag = "--guide-budget-tokens" if o.guide_budget_tokens else "--guide-base-url"
        raise RlgfError(f"{flag} is for an API guide (openai:MODEL), not '{o.guide}'", f"drop {flag}")


def configs(o: DistillOptions):
    """The BC config (iterations filled in later) and the --then config, both validated."""
    from rlgf_cli.training.config import build_config, normalise_alg

    out = Path(o.out)
    common = dict(task=o.task, learner=o.learner, guide=o.guide, guide_base_url=o.guide_base_url,
                  guide_price_per_1k=o.guide_price_per_1k, seed=o.seed, device=o.device,
                  precision=o.precision, max_new_tokens=o.max_new_tokens, **o.task_options)
    bc = build_config(None, alg="bc", iterations=o.iterations or 1, episodes=o.episodes,
                      minibatch_size=o.minibatch_size, lr=o.lr, out=str(out / "bc"),
                      guide_budget_tokens=o.guide_budget_tokens, **common)
    then = None
    if o.then:
        alg = normalise_alg(o.then)
        if alg == "bc":
            raise RlgfError("--then bc would repeat the BC step", "use an RL algorithm: ppo, ppo++, aggrevated, lols, d2lols")
        then_common = dict(common)
        if o.then_config:  # the file's seed, device and precision win over options left at their defaults
            defaults = {f.name: f.default for f in dataclasses.fields(DistillOptions)}
            for name in ("seed", "device", "precision"):
                if then_common[name] == defaults[name]:
                    del then_common[name]
        then = build_config(o.then_config, config_option="--then-config", alg=alg, init=str(out / "bc" / "final"),
                            iterations=o.then_iterations, out=str(out / alg.replace("+", "p")), **then_common)
    return bc, then


def prepare_out(o: DistillOptions) -> Path:
    return check_out_dir(o.out, o.overwrite)


def check_room(out: Path, learner, then_cfg) -> None:
    """Refuse when the disk cannot hold the checkpoints this experiment will write.

    BC's final checkpoint holds the weights and AdamW's two moments (3× the weights); an RL
    run after it adds a critic of the learner's size, so 6× per checkpoint, times the
    checkpoints it keeps at once. Each run checks again, exactly, when it starts.
    """
    from rlgf_cli.training.checkpoint import SMALL_FILES_BYTES, checkpoint_bytes, ensure_disk_space
    from rlgf_cli.training.run import extra_checkpoints

    weights = checkpoint_bytes(learner) - SMALL_FILES_BYTES
    need = SMALL_FILES_BYTES + 3 * weights
    if then_cfg is not None:
        need += (1 + extra_checkpoints(then_cfg, 0)) * (SMALL_FILES_BYTES + 6 * weights)
    ensure_disk_space(out, need, "the experiment's checkpoints")


def collect(guide, task, examples: list[Example], *, k: int, batch_prompts: int, say, bar) -> tuple[list, str | None]:
    """``([(example, completion), …], why collection stopped early or None)``.

    Starts with one prompt (an API backend calibrates its token estimate on the first reply),
    then batches of ``batch_prompts``; on :class:`GuideBudgetExhausted` (raised before anything
    is sent) the batch is halved until not even one prompt fits.
    """
    sampling = task.train_sampling
    max_new = task.max_new_tokens
    min_new = min(task.min_new_tokens, max_new)
    pairs: list[tuple[Example, str]] = []
    i, size, cap, stopped = 0, 1, max(1, batch_prompts), None
    with bar(f"collect {k} × {len(examples)}") as progress:
        while i < len(examples):
            batch = examples[i : i + size]
            try:
                texts = guide.complete([p for p in task.prompts_for(batch, guide) for _ in range(k)], max_new_tokens=max_new,
                                       min_new_tokens=min_new, sampling=sampling)
            except GuideBudgetExhausted as exc:
                if size > 1:
                    size = cap = max(1, size // 2)
                    continue
                stopped = exc.message
                break
            pairs += [(ex, texts[j * k + s]) for j, ex in enumerate(batch) for s in range(k)]
            i += len(batch)
            progress(i, len(examples))
            if i == len(batch) or i == len(examples) or i * 10 // len(examples) > (i - len(batch)) * 10 // len(examples):
                say(f"collected {len(pairs)} completions of {i}/{len(examples)} prompts")
            size = min(cap, size * 2)
    return pairs, stopped


def score_and_keep(task, pairs: list, k: int, keep_top: int | None, batch: int = 64) -> list[dict]:
    """One row per completion with its reward and whether it is kept for BC."""
    rewards: list[float] = []
    for start in range(0, len(pairs), batch):
        part = pairs[start : start + batch]
        rewards += [float(r) for r in task.reward([e.prompt for e, _ in part], [c for _, c in part], [e for e, _ in part])]
    rows = [{"prompt": e.prompt, "sample": n % k, "completion": c, "reward": r, "kept": bool(c.strip())}
            for n, ((e, c), r) in enumerate(zip(pairs, rewards))]
    if keep_top is not None:
        for start in range(0, len(rows), k):
            group = [r for r in rows[start : start + k] if r["kept"]]
            best = sorted(group, key=lambda r: -r["reward"])[:keep_top]
            for r in group:
                r["kept"] = any(r is b for b in best)
    return rows


def train_bc(cfg, task, learner_spec: str, device: str, callback) -> dict:
    """BC of the learner on ``task.bc_examples()`` (the guide's data); a checkpoint in ``cfg.out/final``."""
    from rlgf_cli.training.bc import BCTrainer
    from rlgf_cli.training.checkpoint import checkpoint_bytes, ensure_disk_space, save_checkpoint
    from rlgf_cli.files import write_atomic
    from rlgf_cli.training.run import load_policy
    from rlgf_cli.runtime import set_seed

    out = Path(cfg.out)
    set_seed(cfg.seed)
    policy = load_policy(learner_spec, device)
    trainer = BCTrainer(cfg, task, policy, callback)
    ensure_disk_space(out, checkpoint_bytes(policy, None, trainer.optimizer), "the final checkpoint")
    out.mkdir(parents=True, exist_ok=True)
    config_toml = cfg.to_toml()
    write_atomic(out / "config.toml", config_toml)
    started, last = time.perf_counter(), {}
    callback("start", {"total": cfg.iterations, "done": 0, "out": str(out)})
    with open(out / "metrics.jsonl", "w", encoding="utf-8") as log:
        while trainer.iteration < cfg.iterations:
            last = trainer.step()
            log.write(json.dumps(last) + "\n")
            log.flush()
            callback("iteration", last)
    final = save_checkpoint(out / "final", policy=policy, optimizer=trainer.optimizer,
                            state={**trainer.state(), "learner": learner_spec, "task": task.name},
                            config_toml=config_toml)
    callback("end", {})
    summary = {"alg": "bc", "learner": learner_spec, "examples": len(trainer.examples), "iterations": trainer.iteration,
               "final": str(final), "seconds": time.perf_counter() - started, "last": last}
    write_atomic(out / "summary.json", json.dumps(summary, indent=2))
    return summary


def distill(o: DistillOptions, *, callback=None, bar=None) -> dict:
    """Run the experiment described in the module docstring; returns the report. One process at a
    time writes an ``--out`` folder (the lock ``rlgf train`` takes; its nested runs take their own)."""
    from rlgf_cli.training.run_lock import RunLock

    lock = RunLock(Path(o.out), work="written")
    made = not Path(o.out).exists()
    try:
        lock.acquire()  # an existing folder: before anything reads it (a new one: once it is made)
        return _distill(o, lock, callback=callback, bar=bar)
    except BaseException:
        if made:  # the folder this call made, left empty by a failure: gone, so the command can run again
            lock.release()
            with contextlib.suppress(OSError):
                Path(o.out).rmdir()
        raise
    finally:
        lock.release()


def _distill(o: DistillOptions, lock, *, callback=None, bar=None) -> dict:
    from backends import resolve
    from backends.precision import freeze_in, resolve_precision

    from rlgf_cli.evaluation.evaluate import evaluate_policy, split_examples
    from rlgf_cli.evaluation.evaluate import metric_names as eval_metric_names
    from rlgf_cli.files import write_atomic
    from rlgf_cli.training.run import build_task, check_specs, guide_options, train
    from rlgf_cli.runtime import resolve_device
    from rlgf_cli.evaluation.distill_report import report_markdown, row

    callback = callback or _noop
    bar = bar or (lambda label: contextlib.nullcontext(lambda done, total: None))

    def say(text: str) -> None:
        callback("message", {"text": text})

    check_options(o)
    bc_cfg, then_cfg = configs(o)
    out = prepare_out(o)
    task = build_task(bc_cfg)
    learner_spec = o.learner or task.default_learner
    check_specs(bc_cfg, task, learner=learner_spec, guide=True, concurrency=o.concurrency)  # before the reward is prepared
    task.check_reward()  # the guide's completions are scored: a task with no usable reward fails before they are paid
    device = resolve_device(o.device)
    prec = resolve_precision(o.precision, device)
    task.use_precision(prec)
    task.prepare(progress=lambda text, frac=None: say(text))
    say(prec.describe())
    eval_examples = split_examples(task, o.eval_split, o.eval_limit)
    train_examples = task.examples("train")[: o.prompts] if o.prompts else task.examples("train")
    say(f"loading learner {learner_spec} and guide {o.guide}")
    reference = resolve(learner_spec, device=device)
    check_room(out, reference, then_cfg)  # before the guide is paid for its completions
    guide = resolve(o.guide, device=device, **guide_options(bc_cfg, concurrency=o.concurrency, task=task))
    freeze_in(guide, prec)
    out.mkdir(parents=True, exist_ok=True)  # a new --out is made and locked before the guide is paid for anything,
    if lock.acquire():  # so a second distill into it stops here (made since the start: check it again)
        prepare_out(o)
    rows, stats = [], {}

    def evaluate(policy, name: str, spec: str) -> None:
        say(f"evaluating {name} on {task.name} {o.eval_split} (n={len(eval_examples)})")
        freeze_in(policy, prec)  # frozen from here on (BC trains its own copy, loaded afresh)
        with bar(f"eval {name}") as progress, prec.autocast():
            res = evaluate_policy(policy, spec, task, split=o.eval_split, seed=o.seed, reference=reference,
                                  batch_size=o.batch_size, progress=progress, examples=eval_examples, scores=False)
        rows.append(row(name, spec, res))

    try:
        evaluate(guide, "guide", o.guide)
    except GuideBudgetExhausted as exc:
        raise RlgfError(f"the guide budget does not cover even the guide's evaluation ({exc.message})",
                        "raise --guide-budget-tokens or lower --eval-limit") from None
    if out.exists() and o.overwrite:
        kept = clear_run(out)
        if kept:
            say(f"--overwrite kept what rlgf did not write in {out}: {', '.join(kept)}")
    k = o.samples_per_prompt
    say(f"collecting {k} guide completion(s) for each of {len(train_examples)} training prompts")
    with prec.autocast():
        pairs, stopped = collect(guide, task, train_examples, k=k, batch_prompts=max(1, o.batch_size // k), say=say,
                                 bar=bar)
    if stopped:
        say(f"guide budget exhausted after {len(pairs)} completions of {len(pairs) // k} prompts; "
            "going on with what was collected")
    if not pairs:
        raise RlgfError("the guide budget ran out before any training completion was collected",
                        "raise --guide-budget-tokens")
    samples = score_and_keep(task, pairs, k, o.keep_top)
    write_atomic(out / "guide_samples.jsonl", "\n".join(json.dumps(r) for r in samples))
    kept = [Example(prompt=r["prompt"], references=(r["prompt"] + r["completion"],), target=r["completion"])
            for r in samples if r["kept"]]
    if not kept:
        raise RlgfError("the guide returned no usable (non-empty) completions to learn from",
                        "check the guide with `rlgf eval --policy GUIDE`")
    stats["collection"] = {
        "prompts": len(pairs) // k, "prompts_planned": len(train_examples), "samples_per_prompt": k,
        "completions": len(pairs), "kept": len(kept), "keep_top": o.keep_top,
        "reward_mean_all": sum(r["reward"] for r in samples) / len(samples),
        "reward_mean_kept": sum(r["reward"] for r in samples if r["kept"]) / len(kept),
        "budget_exhausted": bool(stopped), "stopped": stopped,
        "guide": guide.stats() or None,
    }
    iterations = o.iterations or max(1, math.ceil(o.bc_epochs * len(kept) / bc_cfg.episodes))
    bc_cfg.iterations = iterations
    say(f"BC on {len(kept)} guide completions: {iterations} iteration{'s' if iterations != 1 else ''} of {bc_cfg.episodes} examples")
    stats["bc"] = train_bc(bc_cfg, with_guide_data(task, kept), learner_spec, device, callback)
    evaluate(reference, "learner", learner_spec)
    bc_policy = resolve(stats["bc"]["final"], device=device)
    evaluate(bc_policy, "learner + BC", stats["bc"]["final"])
    del bc_policy
    if then_cfg is not None:
        stats["then"] = run_then(then_cfg, guide, o, callback, say, train)
        if stats["then"].get("iterations"):  # a run stopped before its first iteration is the BC model
            evaluate(resolve(stats["then"]["final"], device=device), f"learner + BC + {then_cfg.alg}",
                     stats["then"]["final"])
    guide.close()
    report = {
        "task": task.name, "split": o.eval_split, "n": len(eval_examples), "guide": o.guide, "learner": learner_spec,
        "metric_names": eval_metric_names(task), "rows": rows, **stats, "guide_total": guide.stats() or None,
        "guide_budget_tokens": o.guide_budget_tokens or None, "out": str(out),
        "task_info": {"reference_model": learner_spec, **task.info(), **prec.info()},
    }
    write_atomic(out / "report.json", json.dumps(report, indent=2))
    write_atomic(out / "report.md", report_markdown(report))
    return report


def run_then(cfg, guide, o: DistillOptions, callback, say, train) -> dict:
    """``rlgf train`` from the BC checkpoint with the same guide and the rest of the budget."""

    if guide.remote and o.guide_budget_tokens:
        left = o.guide_budget_tokens - guide.stats().get("budget_used_tokens", 0)
        if left <= 0 and cfg.algorithm.needs_guide:
            say(f"no guide budget left for --then {cfg.alg}; skipping it")
            return {"alg": cfg.alg, "skipped": "no guide budget left"}
        cfg.guide_budget_tokens = max(1, left)
    say(f"continuing with {cfg.alg} from {cfg.init} for {cfg.iterations} iteration(s)")
    summary = train(cfg, overwrite=True, callback=callback)
    callback("end", {})
    if summary.get("stopped"):
        from rlgf_cli.training.run_folder import budget_resume_command

        say(f"{cfg.alg} stopped early: {summary['stopped']}; continue it with {budget_resume_command(summary['out'])}")
    return summary

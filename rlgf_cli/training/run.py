"""A whole training run: build the objects from a config, loop, log, checkpoint.

Everything that can fail on user input (task, specs, output folder) is checked before
the run folder is created, so a bad command leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import torch

from backends import allocator
from backends.errors import RlgfError

from rlgf_cli.training.checkpoint_writer import CheckpointWriter
from rlgf_cli.training.checkpoint import (CRITIC_DIRS, TMP_PREFIX, checkpoint_bytes, ensure_disk_space, export_final,
                                         folder_bytes, prune_checkpoints, read_state, restore_swapped, reading_checkpoint,
                                         restore_rng_state, rng_state, save_checkpoint, wait_restored)
from rlgf_cli.training.distributed import all_sum, init_from_env, launched_as_main, shutdown
from rlgf_cli.training.interrupt import StopAtBoundary
from rlgf_cli.training.resume_state import load_optimizer, load_rng, refuse_pickles
from rlgf_cli.training.run_folder import (check_iterations, latest_checkpoint, metric_lines, pinned_guide, pinned_model,
                                         resume_advice, still_pinned, truncate_metrics)
from rlgf_cli.training.run_lock import RunLock
from rlgf_cli.files import check_out_dir, clear_run, write_atomic
from rlgf_cli.training import trackers
from rlgf_cli.training.config import TrainConfig
from rlgf_cli.training.config_checks import warn_unread_guide_messages
from backends.precision import resolve_precision
from rlgf_cli.runtime import resolve_device, set_seed
from rlgf_cli.training.trainer import Callback, _noop


class Interrupted(RlgfError):
    """Ctrl-C or SIGTERM during training; the message names the checkpoint to resume from."""

    #: the process's exit status (130 Ctrl-C, 143 SIGTERM)
    exit_code = 130


def build_task(cfg: TrainConfig):
    from tasks import get_task

    options = task_options(data=cfg.data, reward_model=cfg.reward_model, reward=cfg.reward,
                           bertscore_model=cfg.bertscore_model, max_new_tokens=cfg.max_new_tokens,
                           prompt_field=cfg.prompt_field, reference_field=cfg.reference_field, chat_template=cfg.chat_template,
                           reward_label=cfg.reward_label, reward_url=cfg.reward_url, min_new_tokens=cfg.min_new_tokens,
                           temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
                           prompt_max_tokens=cfg.prompt_max_tokens)
    return get_task(cfg.task, **options)


def task_options(**values) -> dict:
    """The task options a user actually gave (``None`` means "the task's default")."""
    return {k: v for k, v in values.items() if v is not None}


def load_policy(spec: str, device: str, say=None):
    from backends import resolve

    policy = resolve(spec, device=device, progress=say)
    if not policy.trainable:
        raise RlgfError(f"'{spec}' cannot be trained here", "the learner must be a local model (hf:… or a folder)")
    return policy


def guide_options(cfg: TrainConfig, used: int = 0, concurrency: int | None = None, task=None) -> dict:
    """The guide backend's options for this run (its class builds them; nothing for a local guide).

    ``used`` tokens (from a resumed run) count against ``--guide-budget-tokens``; ``concurrency``
    caps the requests in flight (the backend's default without it)."""
    from backends import RunSettings, policy_class

    if not cfg.guide:
        return {}
    settings = RunSettings(seed=cfg.seed, base_url=cfg.guide_base_url, budget_tokens=cfg.guide_budget_tokens,
                           budget_used=int(used or 0), price_per_1k=cfg.guide_price_per_1k,
                           max_concurrency=concurrency or cfg.guide_concurrency or None,
                           prompts_per_request=cfg.guide_prompts_per_request, extensions=cfg.guide_extensions or "auto",
                           guide_system=cfg.guide_system or getattr(task, "guide_system", None),
                           guide_instruction=cfg.guide_instruction or getattr(task, "guide_instruction", None),
                           guide_prefill=cfg.guide_prefill)
    return policy_class(cfg.guide).options_from(settings)


def check_guide_continues(cfg: TrainConfig, guide, callback) -> None:
    """An algorithm whose guide rolls out from the learner's prefix needs a guide that can
    continue a partial reply (a chat API needs a prefill form): refuse before any work."""
    if not cfg.algorithm.needs_guide_critic:  # the algorithms with guide roll-outs
        return
    continues = guide.can_continue  # a chat guide under --guide-prefill auto probes here
    note = getattr(guide, "probe_note", "")
    if not continues:
        raise RlgfError(f"--alg {cfg.alg} rolls out with the guide from the learner's partial reply, and "
                        f"{guide.describe()} cannot continue one ({getattr(guide, 'probe_note', '') or 'no prefill'})",
                        "use --alg ppo++ (it needs guide roll-ins only), --guide-prefill continue|prefix|trailing "
                        "where the server supports one, or --guide-prefill instruct (approximate)")
    if note:
        callback("message", {"text": f"guide {guide.describe()}: {note}"
                             + (" — approximate roll-outs" if getattr(guide, "approximate", False) else "")})


def prepare_out_dir(cfg: TrainConfig, overwrite: bool) -> Path:
    out = cfg.out_dir()
    if not overwrite and (out / "config.toml").is_file() and latest_checkpoint(out) is None:
        raise RlgfError(f"--out {out} holds a run that stopped before its first checkpoint (nothing to resume)",
                        "pass --overwrite to start it again, or choose another --out")
    return check_out_dir(out, overwrite)


def extra_checkpoints(cfg: TrainConfig, done: int, existing_run: Path | None = None) -> int:
    """How many checkpoints beyond the one being written must fit on the disk at once.

    Periodic saves keep ``keep_checkpoints`` folders (older ones are pruned after each save)
    and the last iteration's is written while they are still there (``final/`` then links
    its files); on a resume the folders already on disk take their room already.
    """
    to_come = 0
    if cfg.save_every:
        to_come = sum(1 for i in range(done + 1, cfg.iterations) if i % cfg.save_every == 0)
    existing = len(list((existing_run / "checkpoints").glob("iter-*"))) if existing_run else 0
    return max(0, min(cfg.keep_checkpoints, existing + to_come) - existing)


def _forget(out: Path, main: bool, lock: RunLock) -> None:
    """Remove what a run that learned nothing wrote in ``out`` (and ``out`` itself when it made it
    and nothing of the user's is in it), so that the same command can run again."""
    if main and not clear_run(out) and not out.is_symlink():
        lock.release()  # its file is the last one in the folder
        try:
            out.rmdir()
        except OSError:  # something appeared in it meanwhile: leave the folder, not a second error
            pass


def train(cfg: TrainConfig, *, overwrite: bool = False, resume: bool = False,
          callback: Callback | None = None) -> dict:
    """Run training as configured; returns the summary (also written to ``OUT/summary.json``).

    With ``resume=True`` the run continues from the latest checkpoint in ``cfg.out``:
    weights, critics, optimizer, KL controller, prompt order, RNG states and iteration. One
    process at a time trains a run folder (:class:`~rlgf_cli.training.run_lock.RunLock`).
    """
    callback = callback or _noop
    out = cfg.out_dir()
    lock = RunLock(out, enabled=launched_as_main())  # rank 0 alone writes the run folder
    try:
        lock.acquire()  # an existing folder: before anything reads or writes it (a new one: once it is made)
        return _checked_train(cfg, out, lock, overwrite, resume, callback)
    finally:
        lock.release()


def _checked_train(cfg: TrainConfig, out: Path, lock: RunLock, overwrite: bool, resume: bool,
                   callback: Callback) -> dict:
    ckpt: Path | None = None
    if resume:
        refuse_pickles(out)
        parents = (out, out / "checkpoints")
        if launched_as_main():  # a kill between write_folder's two renames: the old folder comes back
            for parent in parents:
                restore_swapped(parent)
        else:  # rank 0 alone writes the run folder: read it once rank 0 has put such a folder back
            wait_restored(parents)
        ckpt = latest_checkpoint(out)
        if ckpt is None:
            hint = ("it stopped before its first checkpoint: start it again with --out and --overwrite"
                    if (out / "config.toml").is_file() else "start the run without --resume")
            raise RlgfError(f"no checkpoint to resume in {out}", hint)
        check_iterations(out, ckpt, cfg.iterations)  # nothing to train: before anything is loaded or rewritten
        metric_lines(out / "metrics.jsonl")  # readable, or one error now rather than after loading
    else:
        prepare_out_dir(cfg, overwrite)
    task = build_task(cfg)
    check_specs(cfg, task, learner=None if ckpt is not None else cfg.init or cfg.learner or task.default_learner,
                guide=cfg.algorithm.needs_guide)  # cheap, before a reward model is prepared
    if cfg.algorithm.trainer != "bc":  # an RL run needs its reward; fail before anything is written
        task.check_reward()
    w, device = init_from_env(resolve_device(cfg.device))
    try:
        return _train(cfg, task, device, w, out, ckpt, overwrite, resume, callback if w.is_main else _noop, lock)
    finally:
        shutdown()


def _train(cfg: TrainConfig, task, device: str, w, out: Path, ckpt: Path | None, overwrite: bool, resume: bool,
           callback: Callback, lock: RunLock) -> dict:
    main = w.is_main  # only rank 0 writes the run folder
    if device.startswith("cuda"):  # TF32 for whatever autocast leaves in float32
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    state = read_state(ckpt) if ckpt else {}
    given = cfg.init or cfg.learner or task.default_learner
    learner_spec = still_pinned(state["learner"], given, "the initial learner") if state.get("learner") \
        else pinned_model(given)
    set_seed(cfg.seed)
    load_from = str(ckpt) if ckpt else learner_spec
    callback("message", {"text": f"loading learner {load_from} on {device}"})
    with reading_checkpoint(ckpt):
        policy = load_policy(load_from, device, say=lambda text: callback("message", {"text": text}))
    precision = resolve_precision(cfg.precision, device)
    auto = None
    if cfg.compile is None and cfg.algorithm.trainer != "bc":  # decided once; config.toml records it
        from backends.hf.compiled import auto_compile

        cfg.compile, auto = auto_compile(precision, cfg.iterations)
    # e.g. train the reward classifier once (at the run's precision), before the run folder exists
    task.use_precision(precision)
    task.prepare(progress=lambda text, frac=None: callback("message", {"text": text}))
    guide_spec = pinned_guide(cfg.guide, state) if cfg.algorithm.needs_guide else None
    trainer = _build_trainer(cfg, task, policy, learner_spec, guide_spec, device, callback, ckpt, state)
    critics = trainer.critics
    callback("message", {"text": f"{trainer.precision.describe()} · memory allocator {allocator.current()}"})
    if cfg.compile:
        note = _compile_note(getattr(trainer, "compiled", None))
        callback("message", {"text": note if auto is None else f"{note} (on by default: {auto}; --no-compile to "
                                                                 "run eagerly)"})

    if ckpt and main:  # left by a kill in the middle of a save: their space counts as free below
        for stale in [*out.glob(TMP_PREFIX + "*"), *(out / "checkpoints").glob(TMP_PREFIX + "*")]:
            shutil.rmtree(stale, ignore_errors=True)
    if main:  # fail now, not after hours of training, when the checkpoints cannot fit
        extra = extra_checkpoints(cfg, trainer.iteration, out if resume else None)
        need = (1 + extra) * checkpoint_bytes(policy, critics, trainer.optimizer)
        if not resume and overwrite:
            need -= folder_bytes(out)  # --overwrite frees the old run first
        ensure_disk_space(out, need, "this run's checkpoints" if extra else "the final checkpoint")
    if not resume and main:
        out.mkdir(parents=True, exist_ok=True)
        if lock.acquire():  # the folder was made since the start (by another run, perhaps): check it again
            prepare_out_dir(cfg, overwrite)
        if overwrite:
            kept = clear_run(out)
            if kept:
                callback("message", {"text": f"--overwrite kept what rlgf did not write in {out}: {', '.join(kept)}"})
    config_toml = cfg.to_toml()
    if main:
        write_atomic(out / "config.toml", config_toml)
    last: dict = {}  # the last iteration's metrics (a resume that only finishes the run: the checkpoint's)
    if ckpt:
        with reading_checkpoint(ckpt):
            load_rng(ckpt)
        if main:
            last = truncate_metrics(out / "metrics.jsonl", trainer.iteration)
        callback("message", {"text": f"resuming from {ckpt} (iteration {trainer.iteration})"})
    else:
        set_seed(cfg.seed)  # same seed → same run, whatever loading consumed

    def resumable_state() -> dict:
        return {**trainer.state(), "learner": learner_spec, "task": cfg.task, **_guide_state(trainer.guide),
                **({"guide": guide_spec, "guide_given": cfg.guide} if guide_spec else {})}

    def checkpoint(target: Path) -> Path:
        if not main:
            return target
        return save_checkpoint(target, policy=policy, critics=critics, optimizer=trainer.optimizer,
                               state=resumable_state(), config_toml=config_toml)

    from backends.openai_api.token_budget import GuideBudgetExhausted

    # periodic checkpoints are written from a snapshot while the next iteration runs (CPU)
    writer = CheckpointWriter(background=main and torch.device(device).type == "cpu")

    def periodic(target: Path) -> Path:
        if not main:
            return target
        return writer.submit(target, policy=policy, critics=critics, optimizer=trainer.optimizer,
                             state=resumable_state(), config_toml=config_toml,
                             then=lambda: prune_checkpoints(out / "checkpoints", cfg.keep_checkpoints))

    guide = trainer.guide
    saved = (trainer.iteration, ckpt) if ckpt else (-1, None)  # the newest checkpoint: (iteration, folder)
    callback("start", {"total": cfg.iterations, "done": trainer.iteration, "out": str(out)})
    started = time.perf_counter()
    stopped = None
    checkpoint_s = 0.0  # what the last periodic checkpoint cost this thread (snapshot, or the write)
    in_step = False  # a Ctrl-C inside an iteration leaves its state half-updated: never checkpoint that
    closing = []  # set once the iterations are done: a signal then waits for the last checkpoint
    stop = StopAtBoundary(lambda name: callback("message", {
        "text": f"{name}: finishing the last checkpoint, final/ and summary.json first (again to stop now and "
                "lose them)" if closing else
                f"{name}: stopping after this iteration, with a checkpoint (Ctrl-C or SIGTERM again to stop now "
                "and lose it)"}))
    tracked = trackers.Trackers(cfg.log_to if main else None, out, done=trainer.iteration, config_toml=config_toml)
    if tracked.tensorboard:
        callback("message", {"text": f"TensorBoard: tensorboard --logdir {tracked.tensorboard}"})
    with open(out / "metrics.jsonl" if main else os.devnull, "a", encoding="utf-8") as log, stop:
        try:
            while trainer.iteration < cfg.iterations:
                before = (rng_state(), trainer.state()) if guide is not None and guide.remote else None
                try:
                    in_step = True
                    last = trainer.step()
                    in_step = False
                except GuideBudgetExhausted as exc:
                    in_step = False
                    # rewind what the cut iteration drew (prompts, random numbers), so the checkpoint
                    # is the end of the last whole iteration and --resume replays this one exactly
                    # (its guide calls that were already paid for then come from the cache)
                    if before is not None:
                        restore_rng_state(before[0])
                        trainer.load_state(before[1])
                    if ckpt is None and trainer.iteration == 0:  # nothing trained (no checkpoint written yet)
                        _forget(out, main, lock)  # no final/ that would be the initial learner
                        hint = (f"raise --guide-budget-tokens (now {cfg.guide_budget_tokens}) and run again: the "
                                "guide's answers already paid for come from its cache")
                        raise RlgfError("the guide's token budget ran out before the first iteration ended, so "
                                        f"nothing was trained ({exc.message})", hint) from None
                    stopped = f"guide budget exhausted after {_iterations(trainer.iteration)} ({exc.message})"
                    callback("message", {"text": f"stopping: {stopped}"})  # the way on: train's closing line
                    break
                except RlgfError as exc:  # a diverged loss, a bad reward, an unreachable API guide…
                    writer.join()  # the checkpoint being written counts
                    if ckpt is None and trainer.iteration == 0:  # nothing learned: no folder to block a retry
                        _forget(out, main, lock)
                        where = f"nothing was kept in {out}; run the same command again once that is fixed"
                    else:
                        where = resume_advice(out)
                    raise RlgfError(exc.message, f"{exc.hint}; {where}" if exc.hint else where) from None
                except Exception:  # a bug: reported as unexpected, but it must not block the retry either
                    writer.join()
                    if ckpt is None and trainer.iteration == 0:
                        _forget(out, main, lock)
                    raise
                last["time_checkpoint_s"] = checkpoint_s
                checkpoint_s = 0.0
                if guide is not None:
                    last.update({f"guide_api_{k}": v for k, v in guide.stats().items() if not isinstance(v, str)})
                log.write(json.dumps(last) + "\n")
                log.flush()
                tracked.log(last)
                callback("iteration", last)
                if cfg.save_every and trainer.iteration % cfg.save_every == 0 and trainer.iteration < cfg.iterations:
                    tick = time.perf_counter()
                    path = periodic(out / "checkpoints" / f"iter-{trainer.iteration:04d}")
                    checkpoint_s = time.perf_counter() - tick
                    saved = (trainer.iteration, path)
                    callback("checkpoint", {"path": str(path)})
                asked = stop.requested
                if w.enabled:  # every rank stops at the same boundary
                    asked = bool(all_sum([1.0 if asked else 0.0], device=device)[0] > 0)
                if asked and trainer.iteration < cfg.iterations:
                    raise KeyboardInterrupt
        except KeyboardInterrupt:
            writer.join()
            if in_step:  # stopped inside an iteration: the last whole one's checkpoint stands
                stopped_by = Interrupted(f"interrupted during iteration {trainer.iteration + 1}, which is lost",
                                         resume_advice(out))
            else:
                path = saved[1] if saved[0] == trainer.iteration else checkpoint(
                    out / "checkpoints" / f"iter-{trainer.iteration:04d}")
                stopped_by = Interrupted(f"interrupted after {_iterations(trainer.iteration)}",
                                         f"checkpoint saved in {path}; continue with rlgf train --resume {out}")
            stopped_by.exit_code = stop.exit_code
            raise stopped_by from None
        finally:
            tracked.close()
            writer.join()  # its error, if any, is raised below or gives way to the run's
    closing.append(True)
    with stop:  # a first Ctrl-C or SIGTERM now waits for the last checkpoint, final/ and summary.json
        try:
            writer.wait()  # a failed last write is an error of the run
            final = finish(out, saved[1] if saved[0] == trainer.iteration else None, checkpoint, trainer.iteration,
                           cfg.keep_checkpoints, main)
            callback("checkpoint", {"path": str(final)})
            if guide is not None:
                guide.close()
            summary = {
                "task": cfg.task,
                "alg": cfg.alg,
                "learner": learner_spec,
                "guide": cfg.guide,
                "iterations": trainer.iteration,
                "resumed_from": str(ckpt) if ckpt else None,
                "out": str(out),
                "final": str(final),
                "seconds": time.perf_counter() - started,
                "stopped": stopped,
                "guide_stats": (guide.stats() or None) if guide is not None else None,
                "last": last,
                "task_info": task.info(),
                **trainer.precision.info(),
                "allocator": allocator.current(),
                "threads": torch.get_num_threads(),  # torch's CPU threads ($OMP_NUM_THREADS, else one per core)
                "compiled": trainer.still_compiled(),
            }
            if main:
                write_atomic(out / "summary.json", json.dumps(summary, indent=2))
        except KeyboardInterrupt:  # the second signal: what was written whole stands
            writer.join()
            stopped_by = Interrupted(f"interrupted after {_iterations(trainer.iteration)}, while writing the "
                                     "last checkpoint", resume_advice(out))
            stopped_by.exit_code = stop.exit_code
            raise stopped_by from None
    return summary


def finish(out: Path, current: Path | None, checkpoint, iteration: int, keep: int, main: bool) -> Path:
    """The end of a run: its last iteration as a resumable checkpoint (``current`` when one
    was already written), kept besides the ``keep`` periodic ones, then ``OUT/final/`` from it."""
    resumable = current or checkpoint(out / "checkpoints" / f"iter-{iteration:04d}")
    if not main:
        return out / "final"
    prune_checkpoints(out / "checkpoints", keep + 1)
    return export_final(resumable, out / "final")


def check_specs(cfg: TrainConfig, task, *, learner: str | None, guide: bool, concurrency: int | None = None) -> None:
    """Unknown backends and missing folders in the ``learner`` spec and (with ``guide``) in
    ``cfg.guide``, and an API guide's missing key, fail here, in milliseconds, not after minutes
    of preparing the task's reward and loading the learner (train and distill); so does a
    ``--log-to`` tracker whose package is missing."""
    from backends import policy_class

    trackers.require(cfg.log_to)
    if learner:
        policy_class(learner)
    guide_class = policy_class(cfg.guide) if guide and cfg.guide else None
    if guide_class is not None:
        guide_class.preflight(guide_options(cfg, concurrency=concurrency, task=task))
    warn_unread_guide_messages(cfg, guide_class)


def _iterations(n: int) -> str:
    return f"{n} iteration{'' if n == 1 else 's'}"


def _guide_state(guide) -> dict:
    stats = guide.stats() if guide is not None else {}
    if not stats:
        return {}
    return {"guide_budget_used_tokens": stats.get("budget_used_tokens", stats.get("total_tokens", 0))}


def _build_trainer(cfg: TrainConfig, task, policy, learner_spec: str, guide_spec: str | None, device: str, callback,
                   ckpt: Path | None, state: dict):
    """The trainer for ``cfg.alg``, with its state restored from ``ckpt`` when resuming."""
    algorithm = cfg.algorithm
    if algorithm.trainer == "bc":
        from rlgf_cli.training.bc import BCTrainer

        trainer = BCTrainer(cfg, task, policy, callback)
    else:
        from backends import resolve
        from backends.hf.critic import Critic

        from rlgf_cli.training.trainer import Trainer

        guide = None
        if algorithm.needs_guide:
            pinned = "" if guide_spec == cfg.guide else f" (--guide {cfg.guide}, as it stood when the run started)"
            callback("message", {"text": f"loading guide {guide_spec}{pinned}"})
            guide = resolve(guide_spec, device=device, progress=lambda text: callback("message", {"text": text}),
                            **guide_options(cfg, used=state.get("guide_budget_used_tokens", 0), task=task))
            guide.validate()  # an API guide: reachable, key accepted, model known — before any output
            check_guide_continues(cfg, guide, callback)
        reference = load_policy(learner_spec, device)

        def critic(name: str):
            if ckpt is not None and (ckpt / CRITIC_DIRS[name]).is_dir():
                with reading_checkpoint(ckpt):
                    return Critic.load(ckpt / CRITIC_DIRS[name], device=device)
            return policy.make_critic()

        trainer = Trainer(cfg, task, policy, reference, critic("learner"), callback, guide=guide,
                          guide_critic=critic("guide") if algorithm.needs_guide_critic else None)
    if ckpt is not None:
        with reading_checkpoint(ckpt):
            trainer.load_state(state)
            load_optimizer(trainer.optimizer, ckpt)
        for group in trainer.optimizer.param_groups:  # AdamW's moments carry on; --weight-decay is this run's
            group["weight_decay"] = cfg.weight_decay
    return trainer


def _compile_note(compiled: list[str] | None) -> str:
    if compiled is None:
        return "--compile applies to the PPO-family update; this trainer runs eagerly"
    if not compiled:
        return "--compile: no model here can be compiled (seq2seq models and API policies stay eager)"
    from backends.hf.compiled import inductor_cache

    return (f"--compile: the {' and '.join(compiled)} score and update with their layers compiled; the first "
            f"iteration compiles them (about 20 s the first time, seconds once cached in {inductor_cache()})")


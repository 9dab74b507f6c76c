"""A whole training run: build the objects from a config, loop, log, checkpoint.

Everything that can fail on user input (task, specs, output folder) is checked before
the run folder is created, so a bad command leaves nothing behind.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch

from backends.errors import RlgfError

from .checkpoint import prune_checkpoints, save_checkpoint, set_seed
from .config import TrainConfig
from .trainer import Callback, _noop


class Interrupted(RlgfError):
    """Ctrl-C during training; the message names the checkpoint that was written."""


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RlgfError(f"--device {name} was asked for but no CUDA device is available", "use --device cpu or auto")
    return name


def build_task(cfg: TrainConfig):
    from tasks import get_task

    options = task_options(data=cfg.data, reward_model=cfg.reward_model, reward=cfg.reward,
                           bertscore_model=cfg.bertscore_model, max_new_tokens=cfg.max_new_tokens)
    return get_task(cfg.task, **options)


def task_options(**values) -> dict:
    """The task options a user actually gave (``None`` means "the task's default")."""
    return {k: v for k, v in values.items() if v is not None}


def load_policy(spec: str, device: str):
    from backends import resolve

    policy = resolve(spec, device=device)
    if not getattr(policy, "trainable", False):
        raise RlgfError(f"'{spec}' cannot be trained here", "the learner must be a local model (hf:… or a folder)")
    return policy


def guide_options(cfg: TrainConfig) -> dict:
    """Backend options for an API guide (the key itself only ever comes from the environment)."""
    if not (cfg.guide or "").lower().startswith("openai:"):
        return {}
    opts: dict = {}
    if cfg.guide_base_url:
        opts["base_url"] = cfg.guide_base_url
    if cfg.guide_budget_tokens:
        opts["budget"] = cfg.guide_budget_tokens
    if cfg.guide_price_per_1k is not None:
        opts["price_per_1k"] = cfg.guide_price_per_1k
    opts["seed"] = cfg.seed
    return opts


def prepare_out_dir(cfg: TrainConfig, overwrite: bool) -> Path:
    out = cfg.out_dir()
    if out.exists() and not out.is_dir():
        raise RlgfError(f"--out {out} exists and is not a folder", "choose another --out")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise RlgfError(
                f"--out {out} already holds a run",
                "choose another --out, or pass --overwrite to replace it",
            )
    return out


def train(cfg: TrainConfig, *, overwrite: bool = False, callback: Callback | None = None) -> dict:
    """Run training as configured; returns the summary (also written to ``OUT/summary.json``)."""
    callback = callback or _noop
    out = prepare_out_dir(cfg, overwrite)
    task = build_task(cfg)
    device = resolve_device(cfg.device)
    learner_spec = cfg.init or cfg.learner or task.default_learner
    set_seed(cfg.seed)
    callback("message", {"text": f"loading learner {learner_spec} on {device}"})
    policy = load_policy(learner_spec, device)
    prepare = getattr(task, "prepare", None)
    if prepare is not None:  # e.g. train the reward classifier once, before the run folder exists
        prepare(progress=lambda text, frac=None: callback("message", {"text": text}))

    if cfg.alg == "bc":
        from .bc import BCTrainer

        trainer = BCTrainer(cfg, task, policy, callback)
        critics = {}
    else:
        from backends import resolve

        from .algorithms import needs_guide, needs_guide_critic
        from .trainer import Trainer

        guide = None
        if needs_guide(cfg.alg):
            callback("message", {"text": f"loading guide {cfg.guide}"})
            guide = resolve(cfg.guide, device=device, **guide_options(cfg))
        reference = load_policy(learner_spec, device)
        guide_critic = policy.make_critic() if needs_guide_critic(cfg.alg) else None
        trainer = Trainer(cfg, task, policy, reference, policy.make_critic(), callback,
                          guide=guide, guide_critic=guide_critic)
        critics = trainer.critics

    if out.exists() and overwrite:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    config_toml = cfg.to_toml()
    (out / "config.toml").write_text(config_toml, encoding="utf-8")
    set_seed(cfg.seed)  # same seed → same run, whatever loading consumed

    def checkpoint(target: Path) -> Path:
        return save_checkpoint(
            target,
            policy=policy,
            critics=critics,
            optimizer=trainer.optimizer,
            state={**trainer.state(), "learner": learner_spec, "task": cfg.task},
            config_toml=config_toml,
        )

    from backends.token_budget import GuideBudgetExhausted

    guide = getattr(trainer, "guide", None)
    callback("start", {"total": cfg.iterations, "out": str(out)})
    started = time.perf_counter()
    last: dict = {}
    stopped = None
    with open(out / "metrics.jsonl", "a", encoding="utf-8") as log:
        try:
            for _ in range(cfg.iterations):
                try:
                    last = trainer.step()
                except GuideBudgetExhausted as exc:
                    stopped = f"guide budget exhausted after {trainer.iteration} iterations ({exc.message})"
                    callback("message", {"text": f"stopping: {stopped}"})
                    break
                if hasattr(guide, "stats"):
                    last.update({f"guide_api_{k}": v for k, v in guide.stats().items() if not isinstance(v, str)})
                log.write(json.dumps(last) + "\n")
                log.flush()
                callback("iteration", last)
                if cfg.save_every and trainer.iteration % cfg.save_every == 0 and trainer.iteration < cfg.iterations:
                    path = checkpoint(out / "checkpoints" / f"iter-{trainer.iteration:04d}")
                    prune_checkpoints(out / "checkpoints", cfg.keep_checkpoints)
                    callback("checkpoint", {"path": str(path)})
        except KeyboardInterrupt:
            path = checkpoint(out / "checkpoints" / f"iter-{trainer.iteration:04d}")
            raise Interrupted(
                f"interrupted after {trainer.iteration} iterations", f"checkpoint saved in {path}"
            ) from None
    final = checkpoint(out / "final")
    callback("checkpoint", {"path": str(final)})
    summary = {
        "task": cfg.task,
        "alg": cfg.alg,
        "learner": learner_spec,
        "guide": cfg.guide,
        "iterations": trainer.iteration,
        "out": str(out),
        "final": str(final),
        "seconds": time.perf_counter() - started,
        "stopped": stopped,
        "guide_stats": guide.stats() if hasattr(guide, "stats") else None,
        "last": last,
        "task_info": task.info(),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return summary

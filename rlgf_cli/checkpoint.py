"""Checkpoints: a plain ``save_pretrained`` folder with the trainer's state beside it.

Layout of one checkpoint folder (``OUT/checkpoints/iter-NNNN/`` or ``OUT/final/``)::

    config.json, model.safetensors, tokenizer files   # plain transformers loads this
    critic/ guide_critic/                               # value models (safetensors)
    optimizer.pt                                        # AdamW state
    trainer_state.json                                  # iteration, KL controller, metrics
    rng.pt                                              # python / numpy / torch RNG states
    rlgf.toml                                           # the run's resolved config

A checkpoint is written into a temporary sibling folder and renamed into place, so a
crash never leaves a half-written folder under its final name.
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

STATE_FILE = "trainer_state.json"
#: folder of each critic inside a checkpoint
CRITIC_DIRS = {"learner": "critic", "guide": "guide_critic"}
TMP_PREFIX = ".tmp-"


def set_seed(seed: int) -> None:
    """The one place that seeds python, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    target: Path,
    *,
    policy,
    critics: dict | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    state: dict[str, Any] | None = None,
    config_toml: str | None = None,
) -> Path:
    """Write a checkpoint atomically to ``target`` (replacing an older one of that name)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX + target.name + "-", dir=target.parent))
    try:
        policy.save(tmp)
        for name, critic in (critics or {}).items():
            critic.save(tmp / CRITIC_DIRS[name])
        if optimizer is not None:
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(rng_state(), tmp / "rng.pt")
        (tmp / STATE_FILE).write_text(json.dumps(state or {}, indent=2), encoding="utf-8")
        if config_toml is not None:
            (tmp / "rlgf.toml").write_text(config_toml, encoding="utf-8")
        if target.exists():
            old = target.with_name(TMP_PREFIX + target.name + "-old")
            shutil.rmtree(old, ignore_errors=True)
            target.rename(old)
            tmp.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def prune_checkpoints(folder: Path, keep: int) -> None:
    """Keep only the ``keep`` newest ``iter-NNNN`` checkpoints in ``folder``."""
    found = sorted(p for p in Path(folder).glob("iter-*") if p.is_dir())
    for old in found[:-keep] if keep > 0 else found:
        shutil.rmtree(old, ignore_errors=True)


def read_state(folder: Path) -> dict[str, Any]:
    path = Path(folder) / STATE_FILE
    if not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def is_checkpoint(folder: Path) -> bool:
    return (Path(folder) / STATE_FILE).is_file() and (Path(folder) / "config.json").is_file()

"""Checkpoints: a plain ``save_pretrained`` folder with the trainer's state beside it.

A resumable checkpoint (``OUT/checkpoints/iter-NNNN/``)::

    config.json, model.safetensors, tokenizer files   # plain transformers loads this
    critic/ guide_critic/                               # value models (safetensors)
    optimizer.safetensors optimizer.json                # AdamW state (no pickle: resume_state)
    rng.safetensors rng.json                            # python / numpy / torch RNG states
    trainer_state.json                                  # iteration, KL controller, sampler, metrics
    rlgf.toml                                           # the run's resolved config

``OUT/final/`` (:func:`export_final`) is what a user ships: the model, tokenizer, configs and
critics of the run's last checkpoint, hardlinked from it where the file system allows (so
the weights are on disk once), with a short ``trainer_state.json`` (iteration, task, initial
learner) and no resumable state.

A folder is written into a temporary sibling folder and renamed into place, so a crash
never leaves a half-written folder under its final name. Before writing, the free space
is checked against an estimate of the checkpoint's size; a write that still fails (a full
disk, a file-size limit) is reported as an :class:`RlgfError` naming the folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from backends.errors import RlgfError, first_line

from rlgf_cli.files import TMP_PREFIX, nearest_existing, publish_modes
from rlgf_cli.training.resume_state import RESUME_FILES, BadState, save_optimizer, save_rng

STATE_FILE = "trainer_state.json"
#: folder of each critic inside a checkpoint
CRITIC_DIRS = {"learner": "critic", "guide": "guide_critic"}
#: room kept beside the tensors for configs, tokenizer files, RNG and trainer state
SMALL_FILES_BYTES = 64 * 2**20
#: what OUT/final/trainer_state.json keeps of the trainer state (evaluation reads task and learner)
SHIPPED_STATE = ("iteration", "alg", "task", "learner", "guide_budget_used_tokens")
GIB = 2**30
DAMAGE_HINT = "delete that folder to resume from the previous checkpoint, or start again with --overwrite"


def damage_hint(folder: Path) -> str:
    """What to do about a damaged ``folder``: a checkpoint can be dropped for the one before it; a
    run's ``final/`` (what ``eval`` and ``--init`` read) has the run's last checkpoint beside it."""
    folder = Path(folder)
    if folder.name == "final":
        return (f"use the run's last checkpoint instead ({folder.parent / 'checkpoints'}/iter-NNNN holds the same "
                "weights), or train the run again")
    return DAMAGE_HINT


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


def _tensor_bytes(tensors, seen: set) -> int:
    total = 0
    for t in tensors:
        if not isinstance(t, torch.Tensor) or t.data_ptr() in seen:
            continue  # tied weights are stored once
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total


def checkpoint_bytes(policy=None, critics: dict | None = None, optimizer=None) -> int:
    """An estimate of one checkpoint's size on disk (weights, critics, AdamW state, small files).

    Before the first update AdamW holds no state yet; it is then counted as the two moment
    tensors it will hold per trainable parameter.
    """
    seen: set = set()
    total = SMALL_FILES_BYTES
    modules = [getattr(policy, "model", policy), *(critics or {}).values()]
    for module in modules:
        if isinstance(module, torch.nn.Module):
            total += _tensor_bytes(module.state_dict().values(), seen)
    if optimizer is not None:
        for group in optimizer.param_groups:
            for p in group["params"]:
                state = optimizer.state.get(p)
                if state:
                    total += sum(v.numel() * v.element_size() for v in state.values() if isinstance(v, torch.Tensor))
                elif p.requires_grad:
                    total += 2 * p.numel() * p.element_size()
    return total


def folder_bytes(folder: Path) -> int:
    """Bytes of the files under ``folder`` (0 when it does not exist); a hardlinked file counts once."""
    if not Path(folder).is_dir():
        return 0
    sizes = {}
    for f in Path(folder).rglob("*"):
        if f.is_file():
            st = f.stat()
            sizes[(st.st_dev, st.st_ino)] = st.st_size
    return sum(sizes.values())


def ensure_disk_space(folder: Path, need: int, what: str) -> None:
    """Raise a clear error when ``folder``'s file system has less than ``need`` bytes free."""
    folder = Path(folder)
    free = shutil.disk_usage(nearest_existing(folder)).free
    if free < need:
        raise RlgfError(
            f"not enough disk space for {what} in {folder}: it needs about {need / GIB:.2f} GiB "
            f"and {free / GIB:.2f} GiB are free",
            "free some space, write the run elsewhere with --out, or checkpoint less often "
            "(--save-every 0 writes only the final one)",
        )


def save_checkpoint(
    target: Path,
    *,
    policy,
    critics: dict | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    state: dict[str, Any] | None = None,
    config_toml: str | None = None,
    rng: dict[str, Any] | None = None,
) -> Path:
    """Write a resumable checkpoint atomically to ``target`` (replacing an older one of that name);
    ``rng`` is a :func:`rng_state` taken earlier (default: the generators' states now)."""
    target = Path(target)

    def fill(tmp: Path) -> None:
        policy.save(tmp)
        for name, critic in (critics or {}).items():
            critic.save(tmp / CRITIC_DIRS[name])
        if optimizer is not None:
            save_optimizer(optimizer, tmp)
        save_rng(tmp, rng)
        (tmp / STATE_FILE).write_text(json.dumps(state or {}, indent=2), encoding="utf-8")
        if config_toml is not None:
            (tmp / "rlgf.toml").write_text(config_toml, encoding="utf-8")

    return write_folder(target, fill, checkpoint_bytes(policy, critics, optimizer))


def export_final(source: Path, target: Path) -> Path:
    """``target`` (``OUT/final/``): the checkpoint ``source`` without its resumable state.

    Its files are hardlinks to the checkpoint's (copies where the file system has none):
    the checkpoint is never written again, and pruning it later leaves ``target`` whole."""
    source, target = Path(source), Path(target)
    state = json.loads((source / STATE_FILE).read_text(encoding="utf-8"))

    def fill(tmp: Path) -> None:
        for path in sorted(source.rglob("*")):
            rel = path.relative_to(source)
            if len(rel.parts) == 1 and rel.name in (*RESUME_FILES, STATE_FILE):
                continue
            if path.is_dir():
                (tmp / rel).mkdir(parents=True, exist_ok=True)
            else:
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                _link_or_copy(path, tmp / rel)
        shipped = {k: state[k] for k in SHIPPED_STATE if k in state}
        (tmp / STATE_FILE).write_text(json.dumps(shipped, indent=2), encoding="utf-8")

    return write_folder(target, fill, SMALL_FILES_BYTES)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # no hardlinks here (some network and FUSE file systems)
        shutil.copy2(src, dst)


def restore_swapped(parent: Path) -> list[Path]:
    """Put back a folder :func:`write_folder` had moved aside when a kill came between its two
    renames (``.tmp-NAME-old`` there, no ``NAME``): the old folder is whole, the new one may not be.
    Returns the folders restored. Only the process that holds the run's lock calls it (rank 0);
    the other ranks :func:`wait_restored` before they look for the latest checkpoint."""
    restored = []
    for old, target in swapped(parent):
        old.rename(target)
        restored.append(target)
    return restored


def swapped(parent: Path) -> list[tuple[Path, Path]]:
    """``(moved-aside folder, its name)`` for each folder :func:`restore_swapped` would put back."""
    pairs = []
    for old in parent.glob(TMP_PREFIX + "*-old"):
        target = parent / old.name[len(TMP_PREFIX):-len("-old")]
        if old.is_dir() and not target.exists():
            pairs.append((old, target))
    return pairs


def wait_restored(parents, timeout: float = 120.0, poll: float = 0.1) -> bool:
    """Wait (writing nothing) until no folder of ``parents`` is moved aside: rank 0 puts such a
    folder back at a resume, or a run writing a checkpoint renames its new one in, within moments.
    True when none is left; False after ``timeout`` seconds (then rank 0 has failed, and the
    rendezvous says so)."""
    deadline = time.monotonic() + timeout
    while any(swapped(Path(p)) for p in parents):
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll)
    return True


def write_folder(target: Path, fill, need: int) -> Path:
    """Build a folder with ``fill(tmp)`` in a temporary sibling, then rename it to ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    ensure_disk_space(target.parent, need, f"checkpoint {target.name}")
    tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX + target.name + "-", dir=target.parent))
    try:
        fill(tmp)
        publish_modes(tmp)  # mkdtemp's folder (and some writers' files) are private: `final/` is shipped
        if target.exists():
            old = target.with_name(TMP_PREFIX + target.name + "-old")
            shutil.rmtree(old, ignore_errors=True)
            target.rename(old)
            tmp.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(target)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if _is_write_failure(exc):
            free = shutil.disk_usage(target.parent).free / GIB
            raise RlgfError(
                f"could not write checkpoint {target}: {first_line(exc)} ({free:.2f} GiB free there)",
                "free some space or write the run elsewhere with --out; an older checkpoint of "
                "that name, if any, is unchanged",
            ) from None
        raise
    return target


def _is_write_failure(exc: BaseException) -> bool:
    """A full disk or a file-size limit, as ``open``/``write`` or torch's zip writer reports it."""
    if isinstance(exc, OSError):
        return True
    # torch.save's writer turns a failed write into a RuntimeError ("unexpected pos …",
    # "PytorchStreamWriter failed writing file …"), safetensors into a SafetensorError
    text = str(exc)
    return isinstance(exc, Exception) and any(
        key in text for key in ("unexpected pos", "PytorchStreamWriter", "No space left", "File too large")
    )


def checkpoint_number(path: Path) -> int:
    """The iteration in an ``iter-NNNN`` name, as a number (``iter-10000`` comes after
    ``iter-9999``, which sorting the names would not give)."""
    tail = path.name.rpartition("-")[2]
    return int(tail) if tail.isdigit() else -1


def prune_checkpoints(folder: Path, keep: int) -> None:
    """Keep only the ``keep`` newest ``iter-NNNN`` checkpoints in ``folder``."""
    found = sorted((p for p in Path(folder).glob("iter-*") if p.is_dir()), key=checkpoint_number)
    for old in found[:-keep] if keep > 0 else found:
        shutil.rmtree(old, ignore_errors=True)


def read_state(folder: Path) -> dict[str, Any]:
    path = Path(folder) / STATE_FILE
    if not path.is_file():
        return {}
    with reading_checkpoint(folder):
        state = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(state, dict) or not isinstance(state.get("iteration", 0), int):
        raise RlgfError(f"checkpoint {folder} is damaged: {STATE_FILE} is not a trainer state", damage_hint(folder))
    return state


def _is_damage(exc: BaseException) -> bool:
    """A file that does not parse — not out-of-memory, a missing import or a bug."""
    if isinstance(exc, (json.JSONDecodeError, BadState, EOFError, UnicodeDecodeError)):
        return True
    if type(exc).__name__ in ("SafetensorError", "HeaderTooLarge", "HeaderTooSmall", "InvalidHeaderDeserialization"):
        return True
    text = str(exc)
    # a truncated or foreign weights file, as transformers' loaders report it
    return isinstance(exc, (RuntimeError, OSError)) and "memory" not in text.lower() and any(
        key in text for key in ("PytorchStreamReader", "zip archive", "invalid header", "Error while deserializing",
                                "unable to load weights", "Unable to load weights"))


@contextlib.contextmanager
def reading_checkpoint(folder: Path | None):
    """Turn a damaged checkpoint file (truncated, not JSON, not safetensors…) into one clear error;
    anything else (out of memory, a bug) passes through unchanged."""
    try:
        yield
    except Exception as exc:
        # a loader's own RlgfError about a damaged file (HFPolicy.load) gets the checkpoint's advice
        cause = exc.__cause__ if isinstance(exc, RlgfError) else exc
        if folder is None or cause is None or not _is_damage(cause):
            raise
        raise RlgfError(
            f"checkpoint {folder} is damaged: {type(cause).__name__}: {first_line(cause)}",
            damage_hint(folder),
        ) from None


def is_checkpoint(folder: Path) -> bool:
    return (Path(folder) / STATE_FILE).is_file() and (Path(folder) / "config.json").is_file()

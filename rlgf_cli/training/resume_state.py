"""The resumable trainer state without pickle, so that loading a run folder never runs code.

Beside the model in ``OUT/checkpoints/iter-NNNN/``::

    optimizer.safetensors   AdamW's tensors, one per ``state.<param index>.<name>``
                            (exp_avg, exp_avg_sq, step)
    optimizer.json          its param_groups (lr, betas, eps, …, params) and any non-tensor
                            state values
    rng.safetensors         the torch CPU generator (``torch``) and each CUDA device's (``cuda.N``)
    rng.json                python's ``random`` (version, 625 ints, gauss) and numpy's MT19937

safetensors and JSON hold exact bits, so a resumed run equals an uninterrupted one.
rlgf before this format kept ``optimizer.pt`` and ``rng.pt``: pickles, which a full (not
weights-only) ``torch.load`` would execute. :func:`refuse_pickles` refuses such folders.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch

from backends.errors import RlgfError

FORMAT = 1
OPTIMIZER_TENSORS = "optimizer.safetensors"
OPTIMIZER_META = "optimizer.json"
RNG_TENSORS = "rng.safetensors"
RNG_META = "rng.json"
#: what a resumable checkpoint holds beyond what OUT/final/ ships
RESUME_FILES = (OPTIMIZER_TENSORS, OPTIMIZER_META, RNG_TENSORS, RNG_META)
#: the pickle files of rlgf before this format
LEGACY_FILES = ("optimizer.pt", "rng.pt")


class BadState(ValueError):
    """A state file that parses but does not hold what it should (a damaged checkpoint)."""


# -- optimizer ------------------------------------------------------------------------------


def save_optimizer(optimizer, folder: Path) -> None:
    """Write ``optimizer``'s state (an optimizer, or anything with its ``state_dict()``)."""
    from safetensors.torch import save_file

    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        scalars[str(index)] = {}
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[str(index)][name] = value
    save_file(tensors, str(Path(folder) / OPTIMIZER_TENSORS))
    meta = {"format": FORMAT, "param_groups": state["param_groups"], "state": scalars}
    (Path(folder) / OPTIMIZER_META).write_text(json.dumps(meta), encoding="utf-8")


def load_optimizer(optimizer: torch.optim.Optimizer, folder: Path) -> None:
    """Restore what :func:`save_optimizer` wrote (the tensors move to their parameters' device)."""
    from safetensors.torch import load_file

    _require(folder, OPTIMIZER_META, OPTIMIZER_TENSORS)
    meta = _read_json(Path(folder) / OPTIMIZER_META)
    tensors = load_file(str(Path(folder) / OPTIMIZER_TENSORS))
    try:
        state = {int(index): dict(values) for index, values in meta["state"].items()}
        for key, tensor in tensors.items():
            head, index, name = key.split(".", 2)
            if head != "state":
                raise ValueError(f"unexpected tensor {key!r}")
            state.setdefault(int(index), {})[name] = tensor
        optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BadState(f"{OPTIMIZER_META} and {OPTIMIZER_TENSORS} do not hold this run's optimizer ({exc})") from None


# -- random number generators ---------------------------------------------------------------


def save_rng(folder: Path, state: dict | None = None) -> None:
    """Write the generators' states: ``state`` (as :func:`~rlgf_cli.training.checkpoint.rng_state`
    took it earlier), or the current ones."""
    from safetensors.torch import save_file

    version, internal, gauss = state["python"] if state else random.getstate()
    name, keys, pos, has_gauss, cached = state["numpy"] if state else np.random.get_state()
    meta = {
        "format": FORMAT,
        "python": {"version": version, "state": list(internal), "gauss_next": gauss},
        "numpy": {"name": name, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached)},
    }
    tensors = {"torch": state["torch"] if state else torch.get_rng_state()}
    cuda = state.get("cuda") if state else (torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)
    if cuda:
        tensors.update({f"cuda.{i}": s for i, s in enumerate(cuda)})
    save_file(tensors, str(Path(folder) / RNG_TENSORS))
    (Path(folder) / RNG_META).write_text(json.dumps(meta), encoding="utf-8")


def load_rng(folder: Path) -> None:
    """Set python's, numpy's and torch's generators to what :func:`save_rng` wrote."""
    from safetensors.torch import load_file

    _require(folder, RNG_META, RNG_TENSORS)
    meta = _read_json(Path(folder) / RNG_META)
    tensors = load_file(str(Path(folder) / RNG_TENSORS))
    try:
        py, nps = meta["python"], meta["numpy"]
        python = (int(py["version"]), tuple(int(x) for x in py["state"]), py["gauss_next"])
        numpy = (str(nps["name"]), np.array(nps["keys"], dtype=np.uint32), int(nps["pos"]), int(nps["has_gauss"]),
                 float(nps["cached_gaussian"]))
        random.setstate(python)
        np.random.set_state(numpy)
        torch.set_rng_state(tensors["torch"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise BadState(f"{RNG_META} and {RNG_TENSORS} do not hold random number generator states ({exc})") from None
    cuda = [tensors[f"cuda.{i}"] for i in range(len(tensors)) if f"cuda.{i}" in tensors]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])


# -- older run folders ------------------------------------------------------------------------


def refuse_pickles(out: Path) -> None:
    """Raise :class:`RlgfError` when a run folder holds the pickle files of an older rlgf."""
    out = Path(out)
    for folder in [out / "final", *sorted((out / "checkpoints").glob("iter-*"))]:
        for name in LEGACY_FILES:
            if (folder / name).exists():
                raise RlgfError(
                    f"{folder / name} is a pickle file, which loading could run code: this run folder was written "
                    "by an older rlgf or comes from someone else, so --resume refuses it",
                    f"its final model (safetensors) can still be used: start a new run from it with "
                    f"--init {out / 'final'}",
                )


def _require(folder: Path, *names: str) -> None:
    missing = [n for n in names if not (Path(folder) / n).is_file()]
    if missing:
        raise BadState(f"{missing[0]} is missing")


def _read_json(path: Path) -> dict:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise BadState(f"{path.name} is not an rlgf state file (format {FORMAT})")
    return data

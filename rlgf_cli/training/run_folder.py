"""What a run folder already holds, as ``--resume`` reads it: its newest checkpoint, whether it
has anything left to train, and its ``metrics.jsonl``."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

from backends.errors import RlgfError, RlgfWarning

from rlgf_cli.files import write_atomic
from rlgf_cli.training.checkpoint import is_checkpoint, read_state


def latest_checkpoint(out: Path) -> Path | None:
    """The complete checkpoint with the highest iteration in a run folder's ``checkpoints/``
    (a finished run's last iteration is always among them; ``final/`` holds no resumable
    state); temporary (half-written) folders are never considered."""
    best, best_iter = None, -1
    for path in sorted((out / "checkpoints").glob("iter-*")):
        if path.is_dir() and not path.name.startswith(".") and is_checkpoint(path):
            it = int(read_state(path).get("iteration", -1))
            if it > best_iter:
                best, best_iter = path, it
    return best


def pinned_model(spec: str) -> str:
    """``spec`` as a run records its initial learner (the frozen reference of every resume): a run
    folder given as a model (``--init RUN``) as the absolute model folder it stands for now, so a
    resume loads that model even after RUN is extended; any other spec as it is."""
    from backends.registry import loaded_folder

    path = Path(spec).expanduser()
    chosen = loaded_folder(spec)  # as the registry reads the spec ("smollm2" is the embedded model, a folder or not)
    return spec if chosen is None or chosen == path else os.path.abspath(chosen)


def still_pinned(pinned: str, given: str | None, what: str) -> str:
    """The pinned model folder of a resumed run (:func:`pinned_model` of ``given`` at its start),
    checked before anything loads. Gone (RUN pruned that checkpoint): the run goes on from what
    ``given`` stands for now, with a ``warning:`` line, since that is not the model it began with.
    (A ``final/`` that RUN rewrote on finishing an extension is loaded as it is now.)"""
    path = Path(pinned)
    if given is None or pinned == given or not path.is_absolute() or path.is_dir():
        return pinned  # nothing was pinned (a hub id, an API model, a plain folder), or it is there
    now = pinned_model(given)
    warnings.warn(f"{what} {pinned} (what {given} stood for when this run started) is gone; "
                  f"using what it stands for now: {now}", RlgfWarning, stacklevel=2)
    return now


def pinned_guide(given: str | None, state: dict) -> str | None:
    """The guide a run loads: on resume, the one it started with (:func:`pinned_model` of the
    ``--guide`` then given) while ``--guide`` is unchanged; a new ``--guide`` pinned anew."""
    if not given:
        return None
    if state.get("guide_given") == given and state.get("guide"):
        return still_pinned(state["guide"], given, "the guide")
    return pinned_model(given)


def resume_advice(out: Path) -> str:
    """Where a stopped run goes on from: its newest whole checkpoint, or a fresh start. Every
    rank may call it (it only reads files), so every rank prints the same advice."""
    try:
        kept = latest_checkpoint(out)
    except RlgfError:  # a damaged checkpoint must not hide the error being reported
        kept = None
    if kept is not None:
        return f"the last checkpoint is {kept}; continue with rlgf train --resume {out}"
    return f"no checkpoint was written yet; start again with --out {out} --overwrite"


def budget_resume_command(out) -> str:
    """How a run its guide budget stopped goes on (train's closing line, distill's, the summary)."""
    return f"rlgf train --resume {out} --guide-budget-tokens N (a larger N)"


def check_iterations(out: Path, ckpt: Path, iterations: int) -> None:
    """Refuse a resume with nothing to train, before anything is loaded or written: fewer
    ``--iterations`` than the run has done, or a finished run without more of them. (A run
    killed after its last checkpoint but before ``final/`` and ``summary.json`` goes on: the
    resume writes those.)"""
    done = int(read_state(ckpt).get("iteration", 0))
    if iterations < done:
        raise RlgfError(f"--iterations {iterations} is fewer than the {done} this run has done",
                        f"pass a larger --iterations to train on (e.g. --iterations {done + 10}); "
                        f"its latest model is in {ckpt}")
    final = out / "final"
    if iterations == done and is_finished(out, done):
        raise RlgfError(f"{out} already has its {done} iteration{'s' if done != 1 else ''}: there is nothing "
                        f"to resume (its model is in {final})",
                        f"to train it further, pass the new total: rlgf train --resume {out} --iterations {done + 10}")


def is_finished(out: Path, done: int) -> bool:
    """Whether ``out`` was finished at iteration ``done``: its ``final/`` and ``summary.json`` are there."""
    try:
        shipped = json.loads((out / "final" / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(shipped, dict) and shipped.get("iteration") == done and (out / "summary.json").is_file()


def metric_lines(path: Path) -> list[str]:
    """The lines of a run's ``metrics.jsonl`` (none when it is missing); one clear error when it
    is not text, e.g. overwritten by another file or damaged by a disk fault."""
    if not path.is_file():
        return []
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise RlgfError(f"{path} is damaged: it is not UTF-8 text (byte {exc.start}), so the run's metrics "
                        "cannot be carried on",
                        f"restore it from a copy, or move it aside (mv {path} {path}.bad) and resume again: the "
                        "checkpoints are unaffected, and metrics.jsonl then starts at the resumed iteration") from None


def truncate_metrics(path: Path, iteration: int) -> dict:
    """Drop metric lines of iterations after ``iteration`` (they were not checkpointed); returns
    the last line kept (the metrics of ``iteration``), ``{}`` when there is none."""
    if not path.is_file():
        return {}
    keep, last = [], {}
    for line in metric_lines(path):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a kill
            continue
        if isinstance(record, dict) and record.get("iteration", 0) <= iteration:
            keep.append(line)
            last = record
    write_atomic(path, "\n".join(keep)) if keep else path.write_text("", encoding="utf-8")
    return last if last.get("iteration") == iteration else {}

"""Writing result files so a crash never leaves half of one behind, and checking up front
that they can be written at all (before an hour of work, not after it)."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

from backends.errors import RlgfError
from backends.registry import RUN_LOCK_FILE


def _read_umask() -> int:
    """This process's umask, read without changing it where Linux shows it (``os.umask`` both
    sets and reads it, which would race with files another thread creates)."""
    try:
        for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # at import, before any thread of ours writes
    os.umask(mask)
    return mask


#: what a plain ``open`` / ``mkdir`` would give: temporary files and folders are private (0600 /
#: 0700) and keep that mode through the rename, so results get these before it
FOLDER_MODE = 0o777 & ~_read_umask()
FILE_MODE = FOLDER_MODE & 0o666


def publish_modes(folder: Path) -> None:
    """Give ``folder`` and everything in it the modes a plain write would have (see ``FILE_MODE``)."""
    os.chmod(folder, FOLDER_MODE)
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            os.chmod(os.path.join(root, name), FOLDER_MODE)
        for name in files:
            os.chmod(os.path.join(root, name), FILE_MODE)


def nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists (what a later ``mkdir -p`` would write into)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def ensure_writable(path: str | Path, what: str, *, folder: bool = False) -> None:
    """Raise a clear error now when ``path`` could not be written later.

    ``folder``: ``path`` is a folder to create or fill (``--out``); else a file to (over)write.
    The nearest existing ancestor must be a writable folder.
    """
    path = Path(path).expanduser()
    hint = f"choose another path for {what}"
    if path.exists():
        if folder and not path.is_dir():
            raise RlgfError(f"{what} {path} is a file, not a folder", hint)
        if not folder and path.is_dir():
            raise RlgfError(f"{what} {path} is a folder, not a file", hint)
    probe = nearest_existing(path if folder and path.is_dir() else path.parent)
    if not probe.is_dir():
        raise RlgfError(f"cannot write {what} {path}: {probe} is a file, not a folder", hint)
    if not os.access(probe, os.W_OK | os.X_OK):
        raise RlgfError(f"cannot write {what} {path}: no permission to write in {probe}", hint)
    try:  # os.access says yes to root everywhere, and knows nothing of read-only mounts
        fd, name = tempfile.mkstemp(prefix=".rlgf-probe-", dir=probe)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        raise RlgfError(f"cannot write {what} {path}: {probe} takes no files ({exc.strerror or exc})", hint) from None


def write_hint(exc: OSError, what: str = "another path") -> str:
    """What to do about a failed write, by its cause."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"free some space or choose {what}"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"choose {what} in a folder you can write to"
    return f"choose {what}"


#: the first line of every ``config.toml`` rlgf writes (``TrainConfig.to_toml``)
RUN_HEADER = "# rlgf "
#: the prefix of a checkpoint or file being written (a kill can leave one behind)
TMP_PREFIX = ".tmp-"
#: what ``rlgf train`` and ``rlgf distill`` write at the top of their ``--out`` folder (besides
#: nested runs: distill's ``bc/`` and the run after it); ``--overwrite`` removes these and no other
RUN_ENTRIES = frozenset({"config.toml", "metrics.jsonl", "summary.json", "checkpoints", "final", "tensorboard",
                         "guide_samples.jsonl", "report.json", "report.md"})
#: the lock a training process holds on its run folder (``rlgf_cli.training.run_lock``); a killed
#: run leaves it behind, so listings of a run folder pass over it and ``--overwrite`` leaves it alone
LOCK_FILE = RUN_LOCK_FILE


def _has_header(toml: Path) -> bool:
    try:
        with open(toml, encoding="utf-8") as fh:
            return fh.readline().startswith(RUN_HEADER)
    except (OSError, UnicodeDecodeError):
        return False


def rlgf_made(folder: Path) -> bool:
    """Whether ``folder`` is one rlgf wrote: a run (its ``config.toml``, or the copy each
    checkpoint keeps, starts with :data:`RUN_HEADER`) or a ``distill`` experiment."""
    copies = [folder / "config.toml", folder / "final" / "rlgf.toml", folder / "bc" / "config.toml",
              *sorted((folder / "checkpoints").glob("iter-*/rlgf.toml"))]
    return any(_has_header(t) for t in copies) or (folder / "guide_samples.jsonl").is_file()


def unfinished_run(folder: Path) -> bool:
    """Whether the run in ``folder`` has a resumable checkpoint newer than its ``final/`` (or has
    none), or stopped early by itself (its guide budget spent: ``summary.json``'s ``stopped``): it
    ended before its last iteration, and ``--resume`` continues it."""
    import json

    from backends.registry import run_model

    folder = Path(folder)
    if not any(p.is_dir() and (p / "trainer_state.json").is_file() for p in (folder / "checkpoints").glob("iter-*")):
        return False
    try:
        stopped = json.loads((folder / "summary.json").read_text(encoding="utf-8")).get("stopped")
    except (OSError, ValueError, AttributeError):
        stopped = None
    return bool(stopped) or run_model(folder) != folder / "final"


def _is_rlgf_entry(path: Path) -> bool:
    return (path.name in RUN_ENTRIES or path.name.startswith(TMP_PREFIX)
            or (path.is_dir() and not path.is_symlink() and _has_header(path / "config.toml")))


def check_out_dir(out: str | Path, overwrite: bool) -> Path:
    """A run folder (``--out``) that may be written: new, empty, or an earlier rlgf run whose own
    files ``--overwrite`` replaces (:func:`clear_run`). A folder rlgf did not write, or one that
    holds the current folder, is refused."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RlgfError(f"--out {out} exists and is not a folder", "choose another --out")
    entries = sorted(p.name for p in out.iterdir() if p.name != LOCK_FILE) if out.is_dir() else []
    if entries:
        made = rlgf_made(out)
        held = "an rlgf run" if made else f"files rlgf did not write ({_listing(entries)})"
        if not overwrite:
            hint = "pass --overwrite to replace it, or choose another --out" if made else "choose another --out"
            if made and unfinished_run(out):
                held, hint = "an rlgf run that has not finished", f"continue it with rlgf train --resume {out}; {hint}"
            raise RlgfError(f"--out {out} already holds {held}", hint)
        cwd = Path.cwd().resolve()
        if cwd == out.resolve() or out.resolve() in cwd.parents:
            raise RlgfError(f"--out {out} holds the current folder; --overwrite would delete it",
                            "choose another --out")
        if not made:
            raise RlgfError(f"--out {out} holds {held}; --overwrite replaces only a folder rlgf wrote",
                            "choose another --out, or empty that folder yourself")
    ensure_writable(out, "--out", folder=True)
    return out


def clear_run(out: Path) -> list[str]:
    """Remove what rlgf wrote in the run folder ``out`` (:data:`RUN_ENTRIES`, unfinished writes and
    nested runs) for ``--overwrite``; anything else stays. Returns the names kept."""
    from backends.registry import training_pid

    for nested in sorted(Path(out).iterdir()):  # before anything goes: a run another process trains stays whole
        holder = training_pid(nested) if nested.is_dir() and not nested.is_symlink() else None
        if holder is not None:
            raise RlgfError(f"--overwrite would delete {nested}, which process {holder} is training",
                            "wait for it to end (or stop it), or choose another --out")
    kept = []
    for path in sorted(Path(out).iterdir()):
        if path.name == LOCK_FILE:  # held by this run (or left by a killed one): not the user's, not to remove
            continue
        if not _is_rlgf_entry(path):
            kept.append(path.name)
        elif path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    return kept


def _listing(names: list[str], most: int = 3) -> str:
    shown = ", ".join(names[:most])
    return shown if len(names) <= most else f"{shown} and {len(names) - most} more"


def write_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` via a temporary file in the same folder, then rename.

    A failure (no space, no permission, a file where a folder should be) is an
    :class:`RlgfError` naming the file; nothing is left under a temporary name.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text if text.endswith("\n") else text + "\n")
            os.fchmod(fh.fileno(), FILE_MODE)  # mkstemp's file is private
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise RlgfError(f"could not write {path}: {exc.strerror or exc}", write_hint(exc)) from None
        raise
    return path


def write_all(items: list[tuple[str | Path, str]]) -> None:
    """Write every file it can; then one error naming those that failed (the others are kept)."""
    failed, hints, written = [], [], []
    for path, text in items:
        try:
            write_atomic(path, text)
            written.append(str(path))
        except RlgfError as exc:
            failed.append(exc.message)
            hints.append(exc.hint)
    if failed:
        kept = f"written: {', '.join(written)}" if written else "nothing was written"
        hint = hints[0] if len(set(hints)) == 1 else "choose other paths"
        raise RlgfError("; ".join(failed), f"{hint} ({kept})")


def check_png(path: str | Path, option: str) -> None:
    """Charts are PNG files: refuse another name up front (and one that cannot be written)."""
    if Path(path).suffix.lower() != ".png":
        raise RlgfError(f"{option} {path} is not a .png file", "name the chart FILE.png")
    ensure_writable(path, option)


def save_png(fig, path: str | Path, option: str) -> Path:
    """Write a matplotlib figure to ``path`` atomically (temporary name, then rename) and
    close it; a failed write is one :class:`RlgfError` naming ``option``."""
    import matplotlib.pyplot as plt

    path = Path(path)
    tmp = path.with_name("." + path.name + ".tmp.png")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(tmp, format="png")
        tmp.replace(path)
    except OSError as exc:
        raise RlgfError(f"could not write the chart {path}: {exc.strerror or exc}",
                        write_hint(exc, f"another {option}")) from None
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path

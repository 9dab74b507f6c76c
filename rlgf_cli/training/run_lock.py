"""One training process per run folder: an exclusive ``flock`` on ``OUT/.rlgf-lock``.

The lock is held from before the first write to the folder until the run ends; the kernel
drops it when the process dies (Ctrl-C, ``kill -9``, a crash), so a stale lock file never
blocks the next run. The file holds the holder's pid, for the message a second process
gives; it is removed when the run ends (a killed run leaves it, harmlessly: code that lists
a run folder ignores :data:`~rlgf_cli.files.LOCK_FILE`). Where ``fcntl`` or ``flock`` is
missing (Windows, some network file systems) runs go unlocked, as before.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from backends.errors import RlgfError

from rlgf_cli.files import LOCK_FILE


class RunLock:
    """The lock on one run folder; :meth:`acquire` may be called again (a no-op once held)."""

    def __init__(self, out: Path, *, enabled: bool = True, work: str = "trained") -> None:
        self.path = Path(out) / LOCK_FILE
        self.enabled = enabled
        #: what the holder does to the folder, for the message a second process gives
        self.work = work
        self.fd: int | None = None

    @property
    def held(self) -> bool:
        return self.fd is not None

    def acquire(self) -> bool:
        """Lock the run folder (which must exist); True when this call took the lock.

        Raises :class:`RlgfError` when another process holds it, having changed nothing."""
        if not self.enabled or self.held or not self.path.parent.is_dir():
            return False
        try:
            import fcntl
        except ImportError:  # not a POSIX system: no locking
            return False
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError:  # a folder we cannot write: what writes to it says so, clearly
                return False
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise self._held_elsewhere() from None
                self._discard()  # a file system without flock (ENOLCK, EOPNOTSUPP…): no lock, no file
                return False
            try:  # the holder before us may have removed the file as we opened it: lock the one there now
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except OSError:
                same = False
            if same:
                break
            os.close(fd)
        self.fd = fd
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        except OSError:  # a full disk: the lock holds all the same, without the pid to name
            pass
        return True

    def release(self) -> None:
        """Remove the lock file and unlock (in that order, so no one locks a file being removed)."""
        if self.fd is None:
            return
        self._discard()
        os.close(self.fd)
        self.fd = None

    def _discard(self) -> None:
        try:
            self.path.unlink(missing_ok=True)
        except OSError:
            pass

    def _held_elsewhere(self) -> RlgfError:
        try:
            pid = self.path.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            pid = ""
        who = f"another process (pid {pid})" if pid.isdigit() else "another process"
        stop = f"kill {pid}" if pid.isdigit() else "stop it"
        return RlgfError(f"{self.path.parent} is being {self.work} by {who}",
                         f"wait for it to end, or {stop} (a training run keeps a checkpoint), then run this again; "
                         "to train a copy at the same time, choose another --out")

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

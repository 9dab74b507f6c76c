"""Stopping a training run: Ctrl-C (SIGINT) or a scheduler's SIGTERM (SLURM, Kubernetes, `kill`).

The first signal finishes the iteration under way and stops at its end, so the checkpoint written
then is a whole iteration's; a second one (either signal) stops at once. The process then exits
with 128 + the first signal's number (130 for Ctrl-C, 143 for SIGTERM), as a shell would report it.
A scheduler that follows SIGTERM with SIGKILL after a grace period must give it more than an
iteration's time (and the checkpoint's write), or the kill lands first and the last whole
checkpoint stands."""

from __future__ import annotations

import signal
import threading
from typing import Callable

SIGNALS = (signal.SIGINT, signal.SIGTERM)
NAMES = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}


class StopAtBoundary:
    """While active, the first SIGINT or SIGTERM sets :attr:`requested` and calls ``on_first``
    with the signal's name ("Ctrl-C" or "SIGTERM"); the next raises ``KeyboardInterrupt``.
    Outside the main thread it does nothing (Python delivers signals there only), and the
    signals keep their ordinary meaning."""

    def __init__(self, on_first: Callable[[str], None]) -> None:
        self.on_first = on_first
        self.requested = False
        #: the first signal received, if any: SIGTERM ends the process with 143, Ctrl-C with 130
        self.signum: int | None = None
        self._previous: dict = {}

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum or signal.SIGINT)

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested, self.signum = True, signum
        self.on_first(NAMES.get(signum, f"signal {signum}"))

    def __enter__(self) -> "StopAtBoundary":
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)  # None: set outside Python
        self._previous = {}

"""Ctrl-C during training: the first one finishes the iteration under way and stops at its end
(so the checkpoint written then is a whole iteration's), a second one stops at once."""

from __future__ import annotations

import signal
import threading
from typing import Callable


class StopAtBoundary:
    """While active, the first SIGINT sets :attr:`requested` and calls ``on_first``; the next
    raises ``KeyboardInterrupt`` as usual. Outside the main thread it does nothing (Python
    delivers signals there only), and Ctrl-C keeps its ordinary meaning."""

    def __init__(self, on_first: Callable[[], None]) -> None:
        self.on_first = on_first
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.on_first()

    def __enter__(self) -> "StopAtBoundary":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

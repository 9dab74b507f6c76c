"""Dynamic batching for ``rlgf serve``: requests that wait together are decoded together.

Each HTTP request thread calls :meth:`Batcher.submit` and blocks. One worker thread owns the
model: it takes the oldest waiting request, waits ``window_s`` (a few milliseconds) for
others to arrive — and another window while the last one brought more, up to
:data:`MAX_WINDOWS` — then decodes every waiting request that decodes the same way (the same
``max_tokens``, ``min_tokens`` and sampling; no ``seed``) in one ``policy.complete`` call,
up to ``max_batch`` prompts. Requests that arrived while the model was busy are all waiting
when it frees, so under load batches fill by themselves. A request with a ``seed`` is decoded
on its own (the seed re-seeds the generator before it, as an unbatched server would).

``max_batch=1`` serves one request at a time (what ``bench/serve.py`` compares against).

A request whose client has gone (``gone()`` turns true while it waits) leaves the queue
unless its batch is already decoding, so abandoned requests — a guide's timed-out tries above
all — do not hold up the ones after them.
"""

from __future__ import annotations

import collections
import random
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from backends.base import Policy, Sampling
from backends.precision import autocast_of


#: the most windows the first waiting request waits for others (while they keep arriving)
MAX_WINDOWS = 8


class ClientGone(Exception):
    """The client of a waiting request went away; its request was dropped before decoding."""


#: how often a waiting request checks whether its client is still there (s)
GONE_POLL_S = 0.1


@dataclass
class _Job:
    prompts: list[str]
    max_new_tokens: int
    min_new_tokens: int
    sampling: Sampling
    seed: int | None
    #: turns true when the client has left (None: never asked)
    gone: Callable[[], bool] | None = None
    done: threading.Event = field(default_factory=threading.Event)
    texts: list[str] | None = None
    error: BaseException | None = None

    @property
    def key(self):
        """Jobs with equal keys share a batch; a seeded sampled job decodes alone (its seed names
        its random stream). A greedy job's seed changes nothing, so it batches (lm-eval sends
        a seed with every request, greedy ones included)."""
        if self.seed is not None and not self.sampling.is_greedy:
            return None
        return (self.max_new_tokens, self.min_new_tokens, self.sampling)


class Batcher:
    """Decodes submitted requests in batches on one worker thread (see the module docstring)."""

    def __init__(self, policy: Policy, *, max_batch: int = 64, window_s: float = 0.005, lock=None,
                 precision=None) -> None:
        self.policy = policy
        self.max_batch = max(1, int(max_batch))
        self.window_s = max(0.0, float(window_s))
        self.lock = lock or threading.Lock()
        self.precision = precision
        self._queue: list[_Job] = []
        self._cond = threading.Condition()
        self._closed = False
        #: prompts per ``policy.complete`` call, the latest 10,000 in order (the tests and the
        #: bench read it; bounded, so a long-lived server does not grow with its traffic)
        self.batches: collections.deque[int] = collections.deque(maxlen=10_000)
        self._worker = threading.Thread(target=self._run, name="rlgf-serve-batcher", daemon=True)
        self._worker.start()

    def submit(self, prompts: list[str], *, max_new_tokens: int, min_new_tokens: int, sampling: Sampling,
               seed: int | None = None, gone=None) -> list[str]:
        """The completions of ``prompts`` (blocks until they are decoded; re-raises the policy's error).
        ``gone``: a callable that turns true when the client has left; the request then leaves the
        queue (:class:`ClientGone`) unless it is already being decoded."""
        if not prompts:
            return []
        job = _Job(list(prompts), int(max_new_tokens), int(min_new_tokens), sampling, seed, gone)
        with self._cond:
            if self._closed:
                raise RuntimeError("the server is shutting down")
            self._queue.append(job)
            self._cond.notify()
        while not job.done.wait(None if gone is None else GONE_POLL_S):
            if gone():
                with self._cond:
                    if job in self._queue:
                        self._queue.remove(job)
                        raise ClientGone()
                job.done.wait()  # its batch is decoding: the others in it still want theirs
        if job.error is not None:
            raise job.error
        return job.texts or []

    def close(self, timeout: float | None = 30.0) -> None:
        """Finish the requests already waiting, then stop the worker."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._worker.join(timeout)

    # -- the worker ---------------------------------------------------------------------
    def _take(self) -> list[_Job] | None:
        while True:
            with self._cond:
                while not self._queue:
                    if self._closed:
                        return None
                    self._cond.wait()
                first = self._queue[0]
            if first.key is not None and self.window_s and self.max_batch > 1:
                self._gather()
            with self._cond:
                self._drop_departed()
                if self._queue:  # (the waiting ones may all have left during the window)
                    return self._batch_from_queue()

    def _drop_departed(self) -> None:
        """Answer the waiting jobs whose clients have left with :class:`ClientGone` (the lock held):
        nothing is decoded for a client that is no longer there, at shutdown included."""
        for job in [job for job in self._queue if job.gone is not None and job.gone()]:
            self._queue.remove(job)
            job.error = ClientGone()
            job.done.set()

    def _batch_from_queue(self) -> list[_Job]:
        """The oldest waiting job and those that decode the same way, up to ``max_batch`` prompts."""
        first = self._queue.pop(0)
        batch, size = [first], len(first.prompts)
        if first.key is not None:
            for job in list(self._queue):
                if job.key == first.key and size + len(job.prompts) <= self.max_batch:
                    self._queue.remove(job)
                    batch.append(job)
                    size += len(job.prompts)
        return batch

    def _gather(self) -> None:
        """Wait while requests keep arriving: one window, then another as long as the last one
        brought more (at most :data:`MAX_WINDOWS` in all, or until a batch's worth waits)."""
        seen = -1
        for _ in range(MAX_WINDOWS):
            with self._cond:
                waiting = sum(len(job.prompts) for job in self._queue)
            if waiting == seen or waiting >= self.max_batch:
                return
            seen = waiting
            time.sleep(self.window_s)

    def _run(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            self._decode(batch)

    def _decode(self, batch: list[_Job]) -> None:
        first = batch[0]
        prompts = [p for job in batch for p in job.prompts]
        try:
            with self.lock, autocast_of(self.precision):
                if first.seed is not None and not first.sampling.is_greedy:
                    seed_everything(first.seed)
                texts = self.policy.complete(prompts, max_new_tokens=first.max_new_tokens,
                                             min_new_tokens=first.min_new_tokens, sampling=first.sampling)
            self.batches.append(len(prompts))
            if len(texts) != len(prompts):
                raise RuntimeError(f"the policy returned {len(texts)} completions for {len(prompts)} prompts")
            at = 0
            for job in batch:
                job.texts = list(texts[at : at + len(job.prompts)])
                at += len(job.prompts)
        except BaseException as exc:  # noqa: BLE001 - handed to every waiting request
            for job in batch:
                job.error = exc
        finally:
            for job in batch:
                job.done.set()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch = sys.modules.get("torch")  # seed torch only if the policy already loaded it
    if torch is not None:
        torch.manual_seed(seed)

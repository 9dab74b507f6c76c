"""Test helpers: a deterministic local policy, and an ``rlgf serve`` server that misbehaves on cue.

``make_fault_server(policy, faults=[...])`` returns a real loopback server (the handler of
:mod:`rlgf_cli.serve`) whose next completion requests fail as scripted, one fault per
request, before it goes back to answering normally:

* ``"429"`` — HTTP 429 with ``Retry-After: <server.retry_after>``;
* ``"500"`` / ``"503"`` — an OpenAI-style server error;
* ``"502-html"`` — a gateway error page that is not JSON;
* ``"400"`` — a request error (must not be retried);
* ``"slow"`` — answers correctly, but only after ``server.slow_s`` seconds;
* ``"malformed"`` — HTTP 200 with truncated JSON;
* ``"bad-shape"`` — HTTP 200 with JSON that is not a completion;
* ``"drop"`` — reads the request, then closes the connection without a reply.

``delay_s`` delays every completion request (outside the model lock) so that concurrent
requests overlap; ``server.max_in_flight`` records the most seen at once.

``server.fault_log`` lists the faults served; ``server.counts`` (from the real server) counts
every request and the tokens of the replies it actually completed.
"""

from __future__ import annotations

import collections
import contextlib
import json
import socket
import threading
import time
from typing import Iterator, Sequence

from backends.base import Policy, Sampling
from rlgf_cli.serve import CompletionHandler, CompletionServer, start_in_thread
from rlgf_cli.serve_request import ApiError, parse_completion_request


class EchoPolicy(Policy):
    """Completes a prompt with its reverse, cut to ``max_new_tokens`` characters.

    Greedy output depends only on the prompt and the length, so any two servers agree.
    Sampled output adds a counter, so every sample differs.
    """

    def __init__(self, spec: str = "echo") -> None:
        super().__init__(spec)
        self.calls = 0
        self.batches: list[int] = []
        self._lock = threading.Lock()

    def complete(self, prompts: Sequence[str], *, max_new_tokens: int, min_new_tokens: int = 0,
                 sampling: Sampling = Sampling()) -> list[str]:
        greedy = not sampling.do_sample or sampling.temperature == 0
        out = []
        with self._lock:
            self.batches.append(len(prompts))
            self.last = {"max_new_tokens": max_new_tokens, "min_new_tokens": min_new_tokens, "sampling": sampling}
            for p in prompts:
                self.calls += 1
                text = (" " + p[::-1])[:max_new_tokens]
                out.append(text if greedy else f"{text[: max(0, max_new_tokens - 6)]}#{self.calls}")
        return out


class CharPolicy(EchoPolicy):
    """:class:`EchoPolicy` whose tokens are characters (the server counts usage with it)."""

    def count_tokens(self, text: str) -> int:
        return len(text)


class FaultHandler(CompletionHandler):
    server: "FaultServer"

    def do_POST(self) -> None:  # noqa: N802
        srv = self.server
        with srv._counts_lock:
            srv.in_flight += 1
            srv.max_in_flight = max(srv.max_in_flight, srv.in_flight)
        try:
            if srv.delay_s:
                time.sleep(srv.delay_s)  # outside the model lock: lets requests overlap
            self._post()
        finally:
            with srv._counts_lock:
                srv.in_flight -= 1

    def _post(self) -> None:
        fault = self.server.next_fault() if self._path() == "/v1/completions" else None
        if fault is None:
            return super().do_POST()
        self.server.bump(requests=1)
        length = int(self.headers.get("Content-Length") or 0)
        data = self.rfile.read(length)
        if fault == "slow":
            time.sleep(self.server.slow_s)
            return self._answer_late(json.loads(data))
        if fault == "drop":
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        if fault == "malformed":
            return self._raw(200, b'{"id": "cmpl-x", "choices": [{"text": "oops', "application/json")
        if fault == "bad-shape":
            return self._raw(200, b'{"id": "cmpl-x", "object": "text_completion", "choices": []}', "application/json")
        if fault == "502-html":
            return self._raw(502, b"<html><body>Bad gateway</body></html>", "text/html")
        status = int(fault)
        headers = {"Retry-After": self.server.retry_after} if status == 429 else None
        kind = "requests" if status == 429 else ("invalid_request_error" if status < 500 else "server_error")
        self.send_json(status, {"error": {"message": f"injected {status}", "type": kind, "param": None, "code": None}}, headers)

    def _answer_late(self, payload) -> None:
        try:
            body = self.complete(parse_completion_request(payload))
        except ApiError as err:
            return self.send_error_json(err)
        self.send_json(200, body)

    def _raw(self, status: int, data: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class FaultServer(CompletionServer):
    faults: collections.deque
    fault_log: list
    retry_after: str
    slow_s: float
    delay_s: float
    in_flight: int
    max_in_flight: int

    def next_fault(self) -> str | None:
        with self._counts_lock:
            if not self.faults:
                return None
            fault = self.faults.popleft()
            self.fault_log.append(fault)
            return fault


def make_fault_server(policy: Policy | None = None, faults: Sequence[str] = (), *, retry_after: str = "0.2",
                      slow_s: float = 1.0, delay_s: float = 0.0, api_key: str | None = None, model_name: str = "echo") -> FaultServer:
    server = FaultServer(("127.0.0.1", 0), FaultHandler, policy or EchoPolicy(), api_key=api_key, model_name=model_name)
    server.faults = collections.deque(faults)
    server.fault_log = []
    server.retry_after = retry_after
    server.slow_s = slow_s
    server.delay_s = delay_s
    server.in_flight = server.max_in_flight = 0
    return server


@contextlib.contextmanager
def running(server: CompletionServer) -> Iterator[CompletionServer]:
    """Serve on a background thread for the ``with`` block."""
    start_in_thread(server)
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()

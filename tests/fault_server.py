"""Test helpers: a deterministic local policy, and an ``rlgf serve`` server that misbehaves on cue.

``make_fault_server(policy, faults=[...])`` returns a real loopback server (the handler of
:mod:`rlgf_cli.serving.server`) whose next completion requests fail as scripted, one fault per
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

Out of process. ``python tests/fault_server.py --policy SPEC`` serves the same way in a
process of its own (so a guide's seeded sampling never touches the test process's torch RNG),
prints its base URL and stops when its stdin closes; :class:`FaultServerProcess` drives it.
Two test-only routes steer it: ``GET /_test/state`` (counts, fault log) and
``POST /_test/faults`` (``{"faults": [...], "retry_after": "0.2", "slow_s": 1.0}``).
"""

from __future__ import annotations

import collections
import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator, Sequence

from backends.base import Policy, Sampling
from rlgf_cli.serving.server import CompletionHandler, CompletionServer, start_in_thread
from rlgf_cli.serving.contract import ApiError, parse_completion_request


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

    def do_GET(self) -> None:  # noqa: N802
        if self.server.dead:
            return self._hang_up()
        if self._path() == "/_test/state":
            srv = self.server
            with srv._counts_lock:
                state = {"counts": dict(srv.counts), "fault_log": list(srv.fault_log), "faults_left": len(srv.faults),
                         "in_flight": srv.in_flight}
            return self.send_json(200, state)
        return super().do_GET()

    def do_POST(self) -> None:  # noqa: N802
        srv = self.server
        if srv.dead:
            return self._hang_up()
        if self._path() == "/_test/faults":
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            with srv._counts_lock:
                srv.faults = collections.deque(body.get("faults", []))
                srv.retry_after = str(body.get("retry_after", srv.retry_after))
                srv.slow_s = float(body.get("slow_s", srv.slow_s))
            return self.send_json(200, {"ok": True})
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

    def _hang_up(self) -> None:
        """A stopped server: close the (kept-alive) connection without a reply."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

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
    dead: bool = False

    def stop_answering(self) -> None:
        """Stop as a killed server would: refuse new connections, hang up on kept-alive ones."""
        self.dead = True
        self.stop()

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
        server.stop()


# -- out of process ---------------------------------------------------------------------
class FaultServerProcess:
    """``tests/fault_server.py`` in a subprocess: ``url``, ``state()``, ``set_faults()``, ``close()``.

    The key (if any) reaches the child through the environment variable named by
    ``api_key_env``, never its command line.
    """

    def __init__(self, policy: str, *, model_name: str = "guide", api_key_env: str | None = None,
                 env: dict | None = None, timeout: float = 120.0) -> None:
        root = Path(__file__).resolve().parent.parent
        env = dict(os.environ if env is None else env)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), str(root / "tests"), env.get("PYTHONPATH")]))
        env.setdefault("OMP_NUM_THREADS", "1")
        cmd = [sys.executable, str(Path(__file__).resolve()), "--policy", policy, "--model-name", model_name]
        if api_key_env:
            cmd += ["--api-key-env", api_key_env]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=env)
        line = self.proc.stdout.readline().strip()
        if not line.startswith("http://"):
            self.close()
            raise RuntimeError(f"the fault server did not start: {line!r} {self.proc.stderr.read()[-2000:]}")
        self.url = line
        host_port = line.split("//", 1)[1].split("/", 1)[0]
        self.host, port = host_port.rsplit(":", 1)
        self.port = int(port)

    def _call(self, method: str, path: str, body: dict | None = None) -> dict:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            data = json.dumps(body).encode() if body is not None else None
            conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
            return json.loads(conn.getresponse().read())
        finally:
            conn.close()

    def state(self, settle: float = 10.0) -> dict:
        """``{"counts": {...}, "fault_log": [...], "faults_left": n, "in_flight": 0}``, once no
        request is in flight (a "slow" reply finishes after its client gave up) or ``settle`` s passed."""
        deadline = time.monotonic() + settle
        while True:
            state = self._call("GET", "/_test/state")
            if state["in_flight"] == 0 or time.monotonic() > deadline:
                return state
            time.sleep(0.05)

    def set_faults(self, faults: Sequence[str], *, retry_after: str = "0.2", slow_s: float = 1.0) -> None:
        self._call("POST", "/_test/faults", {"faults": list(faults), "retry_after": retry_after, "slow_s": slow_s})

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            with contextlib.suppress(OSError):
                stream.close()

    def __enter__(self) -> "FaultServerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def main(argv: Sequence[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(description="a fault-injecting rlgf serve for tests")
    ap.add_argument("--policy", required=True, help="a policy spec (hf:DIR …) or 'echo'")
    ap.add_argument("--model-name", default="guide")
    ap.add_argument("--api-key-env", default=None, help="environment variable holding the key to require")
    args = ap.parse_args(argv)
    if args.policy == "echo":
        policy: Policy = EchoPolicy()
    else:
        import torch

        from backends import resolve

        torch.set_num_threads(1)
        policy = resolve(args.policy, device="cpu")
    key = os.environ.get(args.api_key_env) if args.api_key_env else None
    server = make_fault_server(policy, api_key=key, model_name=args.model_name)
    start_in_thread(server)
    print(server.url, flush=True)
    sys.stdin.read()  # until the parent closes stdin (or dies)
    server.stop()


if __name__ == "__main__":
    main()

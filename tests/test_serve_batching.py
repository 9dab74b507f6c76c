"""``rlgf serve`` batches: requests that wait together are decoded in one batch, and under
greedy decoding each answer equals its unbatched answer (a real tiny model on loopback)."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import pytest

from backends.base import GREEDY, Sampling
from backends.hf.policy import HFPolicy
from rlgf_cli.serving.batcher import Batcher, ClientGone
from rlgf_cli.serving.server import make_server, start_in_thread

pytestmark = pytest.mark.usefixtures("torch_one_thread")
PROMPTS = ["The film was", "A long and winding story about"]


def post(url: str, body: dict) -> dict:
    req = urllib.request.Request(f"{url}/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as reply:
        return json.loads(reply.read())


@pytest.fixture
def server_of(tiny_causal_dir):
    started = []

    def make(**options):
        server = make_server(HFPolicy.load(str(tiny_causal_dir)), "127.0.0.1", 0, model_name="tiny", **options)
        start_in_thread(server)
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


def concurrently(url: str, bodies: list[dict]) -> list[dict]:
    out: list[dict | None] = [None] * len(bodies)

    def one(i: int) -> None:
        out[i] = post(url, bodies[i])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out  # type: ignore[return-value]


def test_two_concurrent_requests_share_one_batch_and_match_their_unbatched_answers(server_of, tiny_causal_dir):
    alone = HFPolicy.load(str(tiny_causal_dir))
    expected = [alone.complete([p], max_new_tokens=6, sampling=GREEDY)[0] for p in PROMPTS]
    server = server_of(batch_window_s=0.3)
    replies = concurrently(server.url, [{"model": "tiny", "prompt": p, "max_tokens": 6, "temperature": 0}
                                        for p in PROMPTS])
    assert [r["choices"][0]["text"] for r in replies] == expected
    assert list(server.batcher.batches) == [2]


def test_requests_that_decode_differently_or_carry_a_seed_are_not_mixed(server_of):
    server = server_of(batch_window_s=0.3)
    concurrently(server.url, [
        {"model": "tiny", "prompt": PROMPTS[0], "max_tokens": 4, "temperature": 0},
        {"model": "tiny", "prompt": PROMPTS[1], "max_tokens": 5, "temperature": 0},
    ])
    assert sorted(server.batcher.batches) == [1, 1]
    first = post(server.url, {"model": "tiny", "prompt": PROMPTS[0], "max_tokens": 5, "seed": 7})
    again = post(server.url, {"model": "tiny", "prompt": PROMPTS[0], "max_tokens": 5, "seed": 7})
    assert first["choices"][0]["text"] == again["choices"][0]["text"]  # a seeded request replays
    # a seed on greedy requests changes nothing, so they still share a batch (lm-eval seeds every request)
    server.batcher.batches.clear()
    concurrently(server.url, [
        {"model": "tiny", "prompt": PROMPTS[0], "max_tokens": 4, "temperature": 0, "seed": 1234},
        {"model": "tiny", "prompt": PROMPTS[1], "max_tokens": 4, "temperature": 0, "seed": 1234},
    ])
    assert list(server.batcher.batches) == [2]
    # seeded sampled ones do not: each seed names its own random stream
    server.batcher.batches.clear()
    concurrently(server.url, [
        {"model": "tiny", "prompt": PROMPTS[0], "max_tokens": 4, "seed": 1},
        {"model": "tiny", "prompt": PROMPTS[1], "max_tokens": 4, "seed": 2},
    ])
    assert sorted(server.batcher.batches) == [1, 1]


def test_max_batch_one_serves_one_request_at_a_time(server_of):
    server = server_of(max_batch=1, batch_window_s=0.3)
    concurrently(server.url, [{"model": "tiny", "prompt": p, "max_tokens": 3, "temperature": 0} for p in PROMPTS * 2])
    assert list(server.batcher.batches) == [1, 1, 1, 1]


def test_a_failing_policy_fails_every_request_of_its_batch_and_the_batcher_goes_on():
    class Flaky:
        calls = 0

        def complete(self, prompts, *, max_new_tokens, min_new_tokens=0, sampling=Sampling()):
            self.calls += 1
            if self.calls == 1:
                raise ValueError("boom")
            return [p.upper() for p in prompts]

    batcher = Batcher(Flaky(), window_s=0.0)
    with pytest.raises(ValueError, match="boom"):
        batcher.submit(["a"], max_new_tokens=2, min_new_tokens=0, sampling=GREEDY)
    assert batcher.submit(["b", "c"], max_new_tokens=2, min_new_tokens=0, sampling=GREEDY) == ["B", "C"]
    batcher.close()
    with pytest.raises(RuntimeError, match="shutting down"):
        batcher.submit(["d"], max_new_tokens=2, min_new_tokens=0, sampling=GREEDY)


def test_sigterm_finishes_the_requests_in_flight_then_exits_0(tiny_causal_dir):
    import os
    import re
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-m", "rlgf_cli", "serve", "--policy", str(tiny_causal_dir), "--port", "0",
                             "--device", "cpu", "--model-name", "tiny", "--batch-window-ms", "800"],
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        url = None
        deadline = time.monotonic() + 120
        while url is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            found = re.search(r"at (http://127\.0\.0\.1:\d+/v1)", line)
            url = found.group(1) if found else None
        assert url, "the server did not start"
        replies: list[dict] = []
        worker = threading.Thread(target=lambda: replies.append(
            post(url, {"model": "tiny", "prompt": "The film", "max_tokens": 5, "temperature": 0})))
        worker.start()
        time.sleep(0.3)  # the request now waits in the batcher's 800 ms window
        proc.send_signal(signal.SIGTERM)
        worker.join(60)
        assert proc.wait(60) == 0
        assert len(replies) == 1 and len(replies[0]["choices"]) == 1
    finally:
        if proc.poll() is None:
            proc.kill()


class Gated:
    """A policy whose first batch waits for ``release``; it records every batch it decodes."""

    def __init__(self):
        self.release, self.started, self.batches = threading.Event(), threading.Event(), []

    def complete(self, prompts, *, max_new_tokens, min_new_tokens=0, sampling=Sampling()):
        self.batches.append(list(prompts))
        self.started.set()
        self.release.wait(30)
        return [p.upper() for p in prompts]


def test_a_request_whose_client_left_leaves_the_queue():
    policy = Gated()
    batcher = Batcher(policy, window_s=0.0, max_batch=1)
    ask = dict(max_new_tokens=2, min_new_tokens=0, sampling=GREEDY)
    first = threading.Thread(target=batcher.submit, args=(["busy"],), kwargs=ask)
    first.start()
    assert policy.started.wait(10)
    gone = threading.Event()
    outcome = []

    def abandoned():
        try:
            outcome.append(batcher.submit(["left"], gone=gone.is_set, **ask))
        except ClientGone:
            outcome.append("dropped")

    waiting = threading.Thread(target=abandoned)
    waiting.start()
    gone.set()  # the client hangs up while its request waits behind the busy batch
    waiting.join(10)
    assert outcome == ["dropped"]
    policy.release.set()
    first.join(10)
    assert batcher.submit(["next"], **ask) == ["NEXT"]
    assert policy.batches == [["busy"], ["next"]], "the abandoned prompt was never decoded"
    batcher.close()


def test_a_client_that_leaves_during_the_batching_window_does_not_stop_the_worker():
    """The worker waits a window for company with the lock released: the only waiting request
    leaving then (its client gone) must not leave the worker popping an empty queue."""
    policy = Gated()
    policy.release.set()
    batcher = Batcher(policy, window_s=0.3, max_batch=4)
    ask = dict(max_new_tokens=2, min_new_tokens=0, sampling=GREEDY)
    leaving = threading.Timer(0.05, lambda: None)
    leaving.start()
    with pytest.raises(ClientGone):
        batcher.submit(["left"], gone=lambda: not leaving.is_alive(), **ask)
    threading.Event().wait(1.0)  # the worker ends its windows (0.3 s each) with nothing left to take
    assert batcher._worker.is_alive()
    answer = []
    asking = threading.Thread(target=lambda: answer.append(batcher.submit(["next"], **ask)), daemon=True)
    asking.start()
    asking.join(10)
    assert answer == [["NEXT"]] and policy.batches == [["next"]]
    batcher.close()


def test_uvicorn_drops_the_requests_of_clients_that_timed_out():
    """A guide that times out and retries leaves its abandoned tries on the server: they must not
    be decoded before the requests that still wait for an answer."""
    from rlgf_cli.serving.asgi import AsgiServer
    from rlgf_cli.serving.service import Service

    policy = Gated()
    srv = AsgiServer(Service(policy, model_name="gated", max_batch=1, batch_window_s=0.0), "127.0.0.1", 0)
    srv.start_in_thread()
    try:
        busy = threading.Thread(target=post, args=(srv.url, {"model": "gated", "prompt": "busy", "max_tokens": 2}))
        busy.start()
        assert policy.started.wait(10)
        for i in range(3):  # each gives up after 0.3 s, while the model is still busy
            req = urllib.request.Request(f"{srv.url}/completions", headers={"Content-Type": "application/json"},
                                         data=json.dumps({"model": "gated", "prompt": f"left {i}", "max_tokens": 2}).encode())
            with pytest.raises(OSError):  # socket.timeout / URLError
                urllib.request.urlopen(req, timeout=0.3)
        deadline = threading.Event()
        for _ in range(50):  # the server notices each hang-up within its poll interval
            if srv.service.counts["dropped"] == 3:
                break
            deadline.wait(0.1)
        assert srv.service.counts["dropped"] == 3
        policy.release.set()
        busy.join(10)
        assert post(srv.url, {"model": "gated", "prompt": "next", "max_tokens": 2})["choices"][0]["text"] == "NEXT"
        assert policy.batches == [["busy"], ["next"]]
    finally:
        policy.release.set()
        srv.stop()


def test_a_request_still_waiting_when_the_drain_runs_out_gets_a_json_503():
    from rlgf_cli.serving.asgi import AsgiServer
    from rlgf_cli.serving.service import Service

    policy = Gated()
    srv = AsgiServer(Service(policy, model_name="gated", max_batch=1, batch_window_s=0.0), "127.0.0.1", 0,
                     drain_s=0.5)
    srv.start_in_thread()
    replies = []

    def ask(prompt):
        req = urllib.request.Request(f"{srv.url}/completions", headers={"Content-Type": "application/json"},
                                     data=json.dumps({"model": "gated", "prompt": prompt, "max_tokens": 2}).encode())
        try:
            urllib.request.urlopen(req, timeout=30)
        except urllib.error.HTTPError as exc:
            replies.append((exc.code, exc.headers.get("content-type"), json.loads(exc.read())))

    clients = [threading.Thread(target=ask, args=("slow",))]
    clients[0].start()
    try:
        assert policy.started.wait(10)
        clients.append(threading.Thread(target=ask, args=("queued",)))  # waits behind the busy batch
        clients[1].start()
        threading.Event().wait(0.3)
        srv.server.should_exit = True  # what Ctrl-C / SIGTERM does
        for client in clients:
            client.join(20)
        assert len(replies) == 2
        for status, kind, body in replies:
            assert status == 503 and kind == "application/json" and "shutting down" in body["error"]["message"]
    finally:
        policy.release.set()
        srv.stop()
    assert policy.batches == [["slow"]], "the request answered with a 503 while it waited was not decoded after"

"""``rlgf serve``: request validation, the HTTP contract (raw and through the openai SDK),
auth, a tiny transformers model behind it, and the ``serve`` command."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import subprocess
import sys

import openai
import pytest

from backends.base import GREEDY, Policy
from backends.errors import RlgfError
from fault_server import CharPolicy, EchoPolicy, running
from rlgf_cli.serving.asgi import AsgiServer
from rlgf_cli.serving.server import make_server
from rlgf_cli.serving.service import Service
from rlgf_cli.serving.contract import ApiError, parse_completion_request

KEY = "serve-test-key-123"


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path):
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "RLGF_SERVE_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("RLGF_CACHE_DIR", str(tmp_path / "cache"))


@contextlib.contextmanager
def serving(stack: str, policy, **options):
    """The standard-library server or the uvicorn one (what ``rlgf serve`` runs), on a free port."""
    if stack == "stdlib":
        with running(make_server(policy, "127.0.0.1", 0, **options)) as srv:
            yield srv
        return
    srv = AsgiServer(Service(policy, **options), "127.0.0.1", 0).start_in_thread()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(params=["stdlib", "uvicorn"])
def server(request):
    with serving(request.param, CharPolicy(), model_name="echo") as srv:
        yield srv


@pytest.fixture(params=["stdlib", "uvicorn"])
def keyed(request):
    with serving(request.param, EchoPolicy(), api_key=KEY, model_name="echo") as srv:
        yield srv


def raw(srv, method, path, body=None, headers=None):
    """One request over a plain socket; ``body`` bytes are sent as they are."""
    host, port = srv.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=10)
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
    conn.request(method, path, body=body, headers=hdrs)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, json.loads(data) if data else None


# -- validation (pure) ------------------------------------------------------------------
def test_request_defaults_and_fields():
    r = parse_completion_request({"model": "m", "prompt": "hi"})
    assert (r.prompts, r.max_tokens, r.temperature, r.n, r.stop) == (["hi"], 16, 1.0, 1, [])
    r = parse_completion_request({"model": "m", "prompt": ["a", "b"], "max_tokens": 4, "temperature": 0,
                                  "top_p": 0.5, "n": 2, "stop": "\n", "seed": 3, "top_k": 50, "min_tokens": 2,
                                  "user": "u", "stream": False, "logprobs": None, "best_of": 2})
    assert (r.prompts, r.n, r.stop, r.seed, r.top_k, r.min_tokens) == (["a", "b"], 2, ["\n"], 3, 50, 2)


@pytest.mark.parametrize("body, param", [
    ([1, 2], None),
    ({"prompt": "x"}, "model"),
    ({"model": "m"}, "prompt"),
    ({"model": "m", "prompt": []}, "prompt"),
    ({"model": "m", "prompt": [1, 2, 3]}, "prompt"),
    ({"model": "m", "prompt": "x", "max_tokens": "5"}, "max_tokens"),
    ({"model": "m", "prompt": "x", "max_tokens": True}, "max_tokens"),
    ({"model": "m", "prompt": "x", "temperature": 3}, "temperature"),
    ({"model": "m", "prompt": "x", "top_p": 0}, "top_p"),
    ({"model": "m", "prompt": "x", "n": 0}, "n"),
    ({"model": "m", "prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"model": "m", "prompt": "x", "seed": 1.5}, "seed"),
    ({"model": "m", "prompt": "x", "seed": 2 ** 70}, "seed"),  # past what torch.manual_seed takes
    ({"model": "m", "prompt": "x", "stream": True}, "stream"),
    ({"model": "m", "prompt": "x", "logprobs": 6}, "logprobs"),
    ({"model": "m", "prompt": "x", "presence_penalty": 1.0}, "presence_penalty"),
    ({"model": "m", "prompt": "x", "bogus": 1}, "bogus"),
])
def test_request_errors(body, param):
    with pytest.raises(ApiError) as err:
        parse_completion_request(body)
    assert err.value.status == 400 and err.value.param == param
    assert set(err.value.body()["error"]) == {"message", "type", "param", "code"}


# -- HTTP contract ------------------------------------------------------------------------
def test_sdk_round_trip(server):
    client = openai.OpenAI(api_key="unused", base_url=server.url, max_retries=0)
    assert [m.id for m in client.models.list()] == ["echo"]
    out = client.completions.create(model="echo", prompt=["abc", "hello"], max_tokens=5, temperature=0, n=2)
    assert [c.index for c in out.choices] == [0, 1, 2, 3]
    assert [c.text for c in out.choices] == [" cba", " cba", " olle", " olle"]
    assert [c.finish_reason for c in out.choices] == ["stop", "stop", "length", "length"]
    assert out.usage.prompt_tokens == 8 and out.usage.completion_tokens == 18  # prompts counted once, not n times
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
    stopped = client.completions.create(model="echo", prompt="hello world", max_tokens=20, temperature=0, stop=["o"])
    assert stopped.choices[0].text == " dlr" and stopped.choices[0].finish_reason == "stop"
    echoed = client.completions.create(model="echo", prompt="ab", max_tokens=5, temperature=0, echo=True)
    assert echoed.choices[0].text == "ab ba"
    client.close()


def test_malformed_bodies_are_400_not_crashes(server):
    for body in (b"{not json", b"\xff\xfe", b"[1, 2]", json.dumps({"model": "echo", "prompt": 5}).encode()):
        status, reply = raw(server, "POST", "/v1/completions", body)
        assert status == 400 and reply["error"]["type"] == "invalid_request_error"
    status, reply = raw(server, "POST", "/v1/completions", {"model": "echo", "prompt": "x", "max_tokens": -1})
    assert status == 400 and reply["error"]["param"] == "max_tokens"
    # a length no model can make (it used to reach the allocator), and NaN, which json accepts
    for param, value in (("max_tokens", 10**8), ("min_tokens", 10**8)):
        status, reply = raw(server, "POST", "/v1/completions", {"model": "echo", "prompt": "x", param: value})
        assert status == 400 and reply["error"]["param"] == param
    for param in ("temperature", "top_p"):
        body = json.dumps({"model": "echo", "prompt": "x", param: float("nan")}).encode()
        assert b"NaN" in body
        status, reply = raw(server, "POST", "/v1/completions", body)
        assert status == 400 and reply["error"]["param"] == param
    assert raw(server, "POST", "/v1/completions", {"model": "echo", "prompt": "abc", "max_tokens": 2})[0] == 200


def test_unknown_model_route_and_method(server):
    status, reply = raw(server, "POST", "/v1/completions", {"model": "gpt-4", "prompt": "x"})
    assert status == 404 and reply["error"]["code"] == "model_not_found" and "echo" in reply["error"]["message"]
    assert raw(server, "GET", "/v1/models/gpt-4")[0] == 404
    assert raw(server, "GET", "/v1/models/echo")[1]["id"] == "echo"
    assert raw(server, "GET", "/v1/nothing")[0] == 404
    assert raw(server, "DELETE", "/v1/models")[0] == 405
    assert raw(server, "GET", "/health") == (200, {"status": "ok", "model": "echo"})


def test_api_key_required(keyed):
    body = {"model": "echo", "prompt": "abc", "max_tokens": 3, "temperature": 0}
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": KEY}):
        for method, path, b in (("POST", "/v1/completions", body), ("GET", "/v1/models", None)):
            status, reply = raw(keyed, method, path, b, headers)
            assert status == 401 and reply["error"]["code"] == "invalid_api_key"
            assert KEY not in json.dumps(reply)
    status, reply = raw(keyed, "POST", "/v1/completions", body, {"Authorization": f"Bearer {KEY}"})
    assert status == 200 and reply["choices"][0]["text"] == " cb"
    assert KEY not in repr(keyed)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(api_key="wrong", base_url=keyed.url, max_retries=0).models.list()


class Broken(Policy):
    def complete(self, prompts, *, max_new_tokens, min_new_tokens=0, sampling=None):
        if prompts[0] == "refuse":
            raise RlgfError("prompt too long")
        raise ZeroDivisionError("boom")


def test_policy_failures_become_error_replies():
    with running(make_server(Broken("broken"), "127.0.0.1", 0)) as srv:
        status, reply = raw(srv, "POST", "/v1/completions", {"model": "broken", "prompt": "x"})
        assert status == 500 and reply["error"]["type"] == "server_error" and "boom" in reply["error"]["message"]
        status, reply = raw(srv, "POST", "/v1/completions", {"model": "broken", "prompt": "refuse"})
        assert status == 400 and "prompt too long" in reply["error"]["message"]
        assert raw(srv, "GET", "/v1/models")[0] == 200  # still serving


def test_bind_errors_are_rlgf_errors(server):
    with pytest.raises(RlgfError, match="cannot listen") as err:
        make_server(EchoPolicy(), "127.0.0.1", server.server_address[1])
    assert "another --port" in err.value.hint  # taken
    for host in ("999.1.1.1", "192.0.2.77"):  # not an address; an address this machine does not have
        with pytest.raises(RlgfError, match=f"cannot listen on {host}") as err:
            make_server(EchoPolicy(), host, 0)
        assert "--host" in err.value.hint


# -- a real (tiny) transformers model behind the server --------------------------------------
def test_tiny_hf_model_served_and_used_as_a_guide(tiny_causal_dir, tmp_path):
    from backends.hf.policy import HFPolicy
    from backends.openai_api.policy import OpenAIPolicy

    local = HFPolicy.load(str(tiny_causal_dir))
    prompts = ["the movie", "a film about"]
    direct = local.complete(prompts, max_new_tokens=6, sampling=GREEDY)
    with running(make_server(local, "127.0.0.1", 0, api_key=KEY, model_name="tiny")) as srv:
        with OpenAIPolicy("openai:tiny", base_url=srv.url, api_key=KEY, cache_path=tmp_path / "c.sqlite",
                          backoff_base=0.01) as guide:
            assert guide.complete(prompts, max_new_tokens=6, sampling=GREEDY) == direct
            s = guide.stats()
        n_prompt = sum(len(local.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts)
        assert s["prompt_tokens"] == srv.counts["prompt_tokens"] == n_prompt
        client = openai.OpenAI(api_key=KEY, base_url=srv.url, max_retries=0)
        a, b = (client.completions.create(model="tiny", prompt="x", max_tokens=6, temperature=1.0, seed=7)
                for _ in range(2))
        assert a.choices[0].text == b.choices[0].text  # same seed, same sample
        client.close()


def test_seeded_guides_reproduce_samples_with_a_cold_cache(tiny_causal_dir):
    from backends.base import Sampling
    from backends.hf.policy import HFPolicy
    from backends.openai_api.policy import OpenAIPolicy

    sampling = Sampling(temperature=1.0)
    prompts = ["the movie", "the movie", "a film"]  # a repeated prompt must still get two samples
    with running(make_server(HFPolicy.load(str(tiny_causal_dir)), "127.0.0.1", 0, model_name="tiny")) as srv:
        def run(seed):
            with OpenAIPolicy("openai:tiny", base_url=srv.url, cache_path=False, seed=seed) as guide:
                return guide.complete(prompts, max_new_tokens=8, sampling=sampling)

        first = run(5)
        assert first == run(5) and first != run(6)
        assert first[0] != first[1]


# -- the command --------------------------------------------------------------------------
def test_serve_command_help_and_bad_input(monkeypatch):
    from typer.testing import CliRunner

    from rlgf_cli.app import app

    monkeypatch.setenv("RLGF_SERVE_API_KEY", "top-secret-value")
    runner = CliRunner()
    result = runner.invoke(app, ["serve", "--help"])
    assert result.exit_code == 0 and "--api-key" in result.output and "top-secret-value" not in result.output
    result = runner.invoke(app, ["serve", "--policy", "echo", "--port", "70000"])
    assert result.exit_code == 1 and "--port" in result.output
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")  # an API model is refused, not proxied
    result = runner.invoke(app, ["serve", "--policy", "openai:gpt-4o-mini", "--port", "0"])
    assert result.exit_code == 1 and result.output.startswith("[error] rlgf serve serves a local policy")


def test_serve_command_runs_until_ctrl_c(tiny_causal_dir, tmp_path):
    env = {**os.environ, "RLGF_SERVE_API_KEY": KEY, "RLGF_CACHE_DIR": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "rlgf_cli", "serve", "--policy", f"hf:{tiny_causal_dir}", "--port", "0",
         "--model-name", "tiny", "--device", "cpu"],
        stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
        # Ctrl-C's default action even under a shell's background job (SIGINT ignored there)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        line = proc.stderr.readline()
        match = re.search(r"at (http://127\.0\.0\.1:\d+/v1) ", line)
        assert match, line
        assert KEY not in line and "auth on" in line
        client = openai.OpenAI(api_key=KEY, base_url=match.group(1), max_retries=0)
        out = client.completions.create(model="tiny", prompt="hello", max_tokens=3, temperature=0)
        assert len(out.choices) == 1 and out.usage.prompt_tokens == 5
        client.close()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0, proc.stderr.read()


# -- the uvicorn stack: auth before the body, a thread per waiting request --------------------
def test_a_request_without_the_key_is_refused_before_its_body_is_read():
    import socket

    with serving("uvicorn", EchoPolicy(), api_key=KEY, model_name="echo") as srv:
        host, port = srv.server_address[:2]
        with socket.create_connection((host, port), timeout=10) as conn:
            # announces a body it never sends: a server that read it first would wait for it
            conn.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 500000\r\n\r\n")
            reply = b""
            while b"invalid_api_key" not in reply and (chunk := conn.recv(4096)):
                reply += chunk
            reply = reply.decode()
        assert reply.startswith("HTTP/1.1 401") and "invalid_api_key" in reply


def test_a_batch_can_hold_more_requests_than_anyios_default_pool_of_40_threads():
    import threading

    from rlgf_cli.serving.asgi import worker_threads

    n = 56
    with serving("uvicorn", EchoPolicy(), model_name="echo", max_batch=64, batch_window_s=0.5) as srv:
        assert worker_threads(srv.service) == 128
        client = openai.OpenAI(api_key="unused", base_url=srv.url, max_retries=0, timeout=60)
        texts = [None] * n

        def one(i):
            reply = client.completions.create(model="echo", prompt=f"p{i:02d}", max_tokens=3, temperature=0)
            texts[i] = reply.choices[0].text

        threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert texts == [(" " + f"p{i:02d}"[::-1])[:3] for i in range(n)]
        assert sum(srv.service.batcher.batches) == n
        assert max(srv.service.batcher.batches) > 40, list(srv.service.batcher.batches)


def test_usage_counts_the_generated_tokens_not_a_re_tokenization(tiny_causal_dir):
    # the tiny model's byte-level tokenizer decodes a cut multi-byte character to U+FFFD, which
    # re-encodes to 3 tokens: counting the text would report more tokens than were generated
    from backends.hf.policy import HFPolicy

    policy = HFPolicy.load(str(tiny_causal_dir))
    with running(make_server(policy, "127.0.0.1", 0, model_name="tiny")) as srv:
        client = openai.OpenAI(base_url=srv.url, api_key="unused", max_retries=0)
        reply = client.completions.create(model="tiny", prompt="Hello", max_tokens=5, n=16, seed=1,
                                          extra_body={"min_tokens": 5})
        assert reply.usage.completion_tokens == 16 * 5
        assert {c.finish_reason for c in reply.choices} == {"length"}
        recounted = sum(len(policy.tokenizer(c.text, add_special_tokens=False)["input_ids"]) for c in reply.choices)
        assert recounted != 16 * 5, "this model's texts re-tokenize differently, or the test proves nothing"
        # a stop string cuts the text: then only the text is left to count
        whole = client.completions.create(model="tiny", prompt="Hello", max_tokens=5, seed=1).choices[0].text
        cut = client.completions.create(model="tiny", prompt="Hello", max_tokens=5, seed=1, stop=[whole[-1]])
        assert cut.choices[0].finish_reason == "stop" and cut.choices[0].text == whole[:whole.index(whole[-1])]
        assert cut.usage.completion_tokens == len(policy.tokenizer(cut.choices[0].text,
                                                                    add_special_tokens=False)["input_ids"])

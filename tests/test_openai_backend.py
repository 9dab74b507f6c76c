"""The ``openai`` backend: pure helpers, then the real SDK against loopback servers.

No SDK or HTTP mocking: every HTTP test runs ``rlgf serve``'s server (or its fault-injecting
subclass in ``tests/fault_server.py``) on 127.0.0.1 and talks to it through ``openai.OpenAI``.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import random
import socket
import sys
import time

import pytest

from backends.base import GREEDY, Sampling
from backends.errors import RlgfError
from backends.openai_api.policy import OpenAIPolicy
from backends.openai_api.payload import (
    MalformedResponse,
    backoff_delay,
    cost_usd,
    create_payload,
    parse_completion,
    parse_retry_after,
    price_for,
    sampling_params,
)
from backends.openai_api import token_budget
from backends.openai_api.token_budget import GuideBudgetExhausted, TokenBudget, rough_token_count
from fault_server import CharPolicy, EchoPolicy, make_fault_server, running

PROMPTS = ["the movie was", "I did not expect", "a quiet film about", "worst plot ever", "the actors"]
SECRET = "sk-test-SECRET-0123456789abcdef"


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_CUSTOM_HEADERS", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("RLGF_CACHE_DIR", str(tmp_path / "cache"))
    empty = tmp_path / "tiktoken"
    empty.mkdir()
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(empty))  # counts are the rough estimate everywhere
    token_budget.load_encoding_offline.cache_clear()
    yield
    token_budget.load_encoding_offline.cache_clear()


@pytest.fixture
def server():
    with running(make_fault_server()) as srv:
        yield srv


def make_policy(url, **kw):
    kw.setdefault("cache_path", False)
    kw.setdefault("backoff_base", 0.01)
    kw.setdefault("timeout", 5.0)
    return OpenAIPolicy("openai:echo", base_url=url, **kw)


def expected(prompts, n=12):
    return EchoPolicy().complete(prompts, max_new_tokens=n, sampling=GREEDY)


# -- pure helpers ---------------------------------------------------------------------
def test_sampling_mapping():
    assert sampling_params(GREEDY) == {"temperature": 0}
    assert sampling_params(Sampling(do_sample=True, temperature=0)) == {"temperature": 0}
    assert sampling_params(Sampling(temperature=0.7, top_p=0.9, top_k=50)) == {"temperature": 0.7, "top_p": 0.9}
    assert sampling_params(Sampling(top_k=50), extensions=True) == {"temperature": 1.0, "top_p": 1.0, "top_k": 50}
    with pytest.raises(RlgfError, match="beam"):
        sampling_params(Sampling(do_sample=False, num_beams=4))


def test_create_payload():
    p = create_payload("davinci-002", ["a"], max_tokens=20, sampling=GREEDY, min_tokens=5)
    assert p == {"model": "davinci-002", "prompt": "a", "max_tokens": 20, "temperature": 0}
    p = create_payload("m", ["a", "b"], max_tokens=8, sampling=Sampling(top_k=50, top_p=0.5), min_tokens=5, extensions=True)
    assert p["prompt"] == ["a", "b"] and p["top_p"] == 0.5
    assert p["extra_body"] == {"top_k": 50, "min_tokens": 5} and "top_k" not in p


def test_parse_completion_orders_by_index_and_reads_usage():
    body = {"choices": [{"index": 1, "text": "B", "finish_reason": "length"}, {"index": 0, "text": "A", "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}}
    parsed = parse_completion(body, 2)
    assert parsed.texts == ["A", "B"] and parsed.finish_reasons == ["stop", "length"]
    assert (parsed.prompt_tokens, parsed.completion_tokens) == (7, 3)
    assert parse_completion(b'{"choices": [{"text": "x"}]}', 1).prompt_tokens is None


@pytest.mark.parametrize("body", [
    b'{"choices": [{"text": "oops',
    b"<html>bad gateway</html>",
    b"[]",
    b'{"choices": []}',
    b'{"choices": [{"text": 3}]}',
    b'{"choices": [{"index": 0, "text": "a"}, {"index": 0, "text": "b"}]}',
    b'{"error": {"message": "upstream broke"}}',
])
def test_parse_completion_rejects_malformed(body):
    with pytest.raises(MalformedResponse):
        parse_completion(body, 1 if b"index" not in body else 2)


def test_retry_after_and_backoff():
    assert parse_retry_after({"Retry-After": "3"}) == 3.0
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    date = email.utils.formatdate(1_000_030, usegmt=True)
    assert parse_retry_after({"Retry-After": date}, now=1_000_000) == pytest.approx(30, abs=1)
    assert parse_retry_after({"Retry-After": "soon"}) is None and parse_retry_after({}) is None
    rng = random.Random(0)
    delays = [backoff_delay(a, base=1.0, cap=8.0, rng=rng) for a in range(6)]
    for a, d in enumerate(delays):
        top = min(8.0, 2.0**a)
        assert top / 2 <= d <= top
    assert backoff_delay(5, base=1.0, cap=8.0, retry_after=2.5) == 2.5
    assert 4.0 <= backoff_delay(3, base=1.0, cap=8.0, retry_after=1e6, rng=rng) <= 8.0  # absurd: ignored


def test_prices():
    assert price_for("davinci-002", None) == (0.002, 0.002)
    assert price_for("my-local", None) is None
    assert price_for("x", 0.5) == (0.5, 0.5) and price_for("x", (1, 2)) == (1.0, 2.0)
    assert cost_usd(1000, 500, (0.002, 0.004)) == pytest.approx(0.004)


# -- token counting and the budget --------------------------------------------------
def test_counting_is_offline_and_never_crashes(monkeypatch):
    def no_network(*a, **k):
        raise AssertionError("token counting tried the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    count, source = token_budget.token_counter("davinci-002")
    assert source == "rough" and count("hello world") == rough_token_count("hello world") == 4
    assert rough_token_count("") == 0


def test_counting_uses_a_verified_local_bpe_file(monkeypatch, tmp_path):
    # a toy byte-level "r50k_base": every byte is one token; accepted only with the pinned hash
    data = b"".join(base64.b64encode(bytes([i])) + f" {i}\n".encode() for i in range(256))
    cache = tmp_path / "tk"
    cache.mkdir()
    url = "https://openaipublic.blob.core.windows.net/encodings/r50k_base.tiktoken"
    (cache / hashlib.sha1(url.encode()).hexdigest()).write_bytes(data)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    token_budget.load_encoding_offline.cache_clear()
    assert token_budget.load_encoding_offline("r50k_base") is None  # hash differs from tiktoken's
    token_budget.load_encoding_offline.cache_clear()
    monkeypatch.setitem(token_budget._KNOWN_SHA256, "r50k_base", hashlib.sha256(data).hexdigest())
    count, source = token_budget.token_counter("text-davinci-001")  # an r50k_base model
    assert source == "r50k_base" and count("hello") == 5


def test_token_budget_reserve_settle():
    b = TokenBudget(100)
    b.reserve(60)
    with pytest.raises(GuideBudgetExhausted):
        b.reserve(50)
    assert isinstance(GuideBudgetExhausted("x"), RlgfError)
    b.settle(60, 30)
    b.reserve(70)
    b.release(70)
    assert b.as_dict() == {"budget_max_tokens": 100, "budget_used_tokens": 30,
                           "budget_remaining_tokens": 70, "budget_exhausted": True}
    with pytest.raises(RlgfError):
        TokenBudget(-1)


# -- key handling -------------------------------------------------------------------
@pytest.mark.parametrize("url", ["http://[::1", "http://127.0.0.1:99999/v1", "http://:8000/v1"])
def test_a_malformed_base_url_is_a_clear_error(url):
    with pytest.raises(RlgfError) as err:
        OpenAIPolicy("openai:m", base_url=url, cache_path=False)
    assert "the OpenAI base URL" in err.value.message and "http://127.0.0.1:8000/v1" in err.value.hint


def test_missing_key_for_openai_says_how_to_set_it():
    with pytest.raises(RlgfError) as err:
        OpenAIPolicy("openai:davinci-002", cache_path=False)
    assert "OPENAI_API_KEY" in err.value.message and "export OPENAI_API_KEY" in err.value.hint
    assert OpenAIPolicy.needs_key and OpenAIPolicy.key_env_var == "OPENAI_API_KEY"
    assert not OpenAIPolicy.can_beam_search


def test_key_never_shown(monkeypatch, server):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("OPENAI_BASE_URL", server.url)
    with OpenAIPolicy("openai:echo", cache_path=False) as p:
        assert p.base_url == server.url
        shown = repr(p) + p.describe() + str(p.stats())
        assert SECRET not in shown and "OPENAI_API_KEY" in repr(p)


def test_registry_builds_the_backend(server):
    from backends.registry import resolve

    p = resolve("openai:echo", device="cpu", base_url=server.url, cache_path=False)
    assert isinstance(p, OpenAIPolicy) and p.model == "echo" and p.spec == "openai:echo"
    assert p.complete(["abc"], max_new_tokens=5, sampling=GREEDY) == [" cba"]
    p.close()


# -- against a healthy server ---------------------------------------------------------
@pytest.mark.parametrize("per_request", [1, 2])
def test_completions_match_the_served_policy(server, per_request):
    with make_policy(server.url, prompts_per_request=per_request, max_concurrency=3) as p:
        assert p.complete(PROMPTS, max_new_tokens=12, sampling=GREEDY) == expected(PROMPTS)
        s = p.stats()
    assert s["calls"] == server.counts["completion_requests"] == -(-len(PROMPTS) // per_request)
    assert s["prompt_tokens"] == server.counts["prompt_tokens"]
    assert s["completion_tokens"] == server.counts["completion_tokens"]
    assert s["retries"] == 0 and s["cost_usd"] is None


def test_unknown_model_lists_what_the_server_offers(server):
    with OpenAIPolicy("openai:ecko", base_url=server.url, cache_path=False) as p:
        with pytest.raises(RlgfError) as err:
            p.complete(["x"], max_new_tokens=3, sampling=GREEDY)
        assert "ecko" in err.value.message and "echo" in err.value.hint and "did you mean" in err.value.hint
        with pytest.raises(RlgfError):
            p.validate()


def test_wrong_or_missing_key_is_a_clear_error():
    with running(make_fault_server(api_key=SECRET)) as srv:
        for key in (None, "sk-wrong-key-000"):
            with OpenAIPolicy("openai:echo", base_url=srv.url, api_key=key, cache_path=False) as p:
                with pytest.raises(RlgfError) as err:
                    p.complete(["x"], max_new_tokens=3, sampling=GREEDY)
                assert "401" in err.value.message and "OPENAI_API_KEY" in err.value.hint
                assert "sk-wrong" not in str(err.value)
        with OpenAIPolicy("openai:echo", base_url=srv.url, api_key=SECRET, cache_path=False) as p:
            assert p.complete(["abc"], max_new_tokens=5, sampling=GREEDY) == [" cba"]


# -- faults -----------------------------------------------------------------------------
FAULTS = ["429", "500", "503", "502-html", "slow", "malformed", "bad-shape", "drop"]


@pytest.mark.parametrize("fault", FAULTS)
def test_each_fault_is_retried(fault):
    with running(make_fault_server(faults=[fault], slow_s=1.0)) as srv:
        with make_policy(srv.url, timeout=0.4) as p:
            assert p.complete(PROMPTS[:1], max_new_tokens=12, sampling=GREEDY) == expected(PROMPTS[:1])
            s = p.stats()
    assert srv.fault_log == [fault]
    assert s["retries"] == 1 and s["requests"] == 2
    lost = fault in ("slow", "malformed", "bad-shape", "drop")
    assert (s["possibly_billed_tokens"] > 0) == lost


def test_a_storm_of_faults_gives_the_healthy_answers():
    with running(make_fault_server(faults=FAULTS * 2, slow_s=1.0)) as srv:
        with make_policy(srv.url, timeout=0.4, max_retries=20, max_concurrency=4) as p:
            got = p.complete(PROMPTS, max_new_tokens=12, sampling=GREEDY)
            s = p.stats()
    assert got == expected(PROMPTS)
    assert srv.fault_log == FAULTS * 2 and s["retries"] == len(FAULTS) * 2
    assert s["calls"] == len(PROMPTS)


def test_retry_after_is_honoured():
    with running(make_fault_server(faults=["429"], retry_after="0.3")) as srv:
        with make_policy(srv.url, backoff_base=0.001) as p:
            start = time.monotonic()
            p.complete(["abc"], max_new_tokens=5, sampling=GREEDY)
            assert time.monotonic() - start >= 0.3


def test_gives_up_after_max_retries_and_does_not_retry_4xx():
    with running(make_fault_server(faults=["500"] * 5)) as srv:
        with make_policy(srv.url, max_retries=2) as p:
            with pytest.raises(RlgfError, match="failed 3 times.*HTTP 500"):
                p.complete(["abc"], max_new_tokens=5, sampling=GREEDY)
            assert p.stats()["requests"] == 3
    with running(make_fault_server(faults=["400"])) as srv:
        with make_policy(srv.url) as p:
            with pytest.raises(RlgfError, match="HTTP 400"):
                p.complete(["abc"], max_new_tokens=5, sampling=GREEDY)
            assert p.stats()["requests"] == 1


def test_the_hint_after_the_last_retry_names_what_to_change():
    with running(make_fault_server(faults=["slow"] * 3, slow_s=1.0)) as srv:
        with make_policy(srv.url, timeout=0.3, max_retries=1, backoff_base=0.001) as p:
            with pytest.raises(RlgfError, match="no reply within 0.3 s") as slow:
                p.complete(["abc"], max_new_tokens=5, sampling=GREEDY)
    assert "RLGF_GUIDE_TIMEOUT (now 0.3 s)" in slow.value.hint and "base URL" not in slow.value.hint
    with running(make_fault_server(faults=["500"] * 3)) as srv:
        with make_policy(srv.url, max_retries=1, backoff_base=0.001) as p:
            with pytest.raises(RlgfError, match="HTTP 500") as failing:
                p.complete(["abc"], max_new_tokens=5, sampling=GREEDY)
    assert "keeps failing" in failing.value.hint


def test_unreachable_server_is_an_rlgf_error():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    with make_policy(f"http://127.0.0.1:{port}/v1", max_retries=1) as p:
        with pytest.raises(RlgfError, match="connection failed") as refused:
            p.complete(["abc"], max_new_tokens=5, sampling=GREEDY)
        assert p.stats()["possibly_billed_tokens"] == 0  # never sent
    assert "the server is up and the base URL is right" in refused.value.hint


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a full listen backlog drops SYNs on Linux")
def test_a_connect_timeout_is_not_charged_as_possibly_billed():
    """A server that never accepts the connection (its listen backlog full) times out in the
    connect: nothing was sent, so neither the stats nor the budget count the request."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    port = srv.getsockname()[1]
    fillers = []
    for _ in range(3):  # fill the backlog; further connects get no answer
        c = socket.socket()
        c.setblocking(False)
        try:
            c.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        fillers.append(c)
    time.sleep(0.2)
    try:
        with make_policy(f"http://127.0.0.1:{port}/v1", timeout=0.3, max_retries=1, backoff_base=0.001) as p:
            with pytest.raises(RlgfError, match="could not connect within 0.3 s"):
                p.complete(["abc"], max_new_tokens=5, sampling=GREEDY)
            assert p.stats()["possibly_billed_tokens"] == 0 and p.stats()["requests"] == 2
    finally:
        for c in fillers:
            c.close()
        srv.close()


# -- cache --------------------------------------------------------------------------------
def test_cache_repeated_batches_cost_nothing(server, tmp_path):
    path = tmp_path / "guide.sqlite"
    with make_policy(server.url, cache_path=path, api_key=SECRET) as p:
        first = p.complete(PROMPTS, max_new_tokens=12, sampling=GREEDY)
        calls = server.counts["completion_requests"]
        assert p.complete(PROMPTS, max_new_tokens=12, sampling=GREEDY) == first
        assert server.counts["completion_requests"] == calls == len(PROMPTS)
        assert p.stats()["cache_hits"] == len(PROMPTS)
        p.complete(PROMPTS[:1], max_new_tokens=13, sampling=GREEDY)  # another length: a new call
        assert server.counts["completion_requests"] == calls + 1
    with make_policy(server.url, cache_path=path) as again:  # a re-run (no key even)
        assert again.complete(PROMPTS, max_new_tokens=12, sampling=GREEDY) == first
    assert server.counts["completion_requests"] == calls + 1
    raw = path.read_bytes() + b"".join(f.read_bytes() for f in tmp_path.glob("guide.sqlite-*"))
    assert SECRET.encode() not in raw and b"the movie was" in raw


def test_greedy_duplicates_share_one_call(server):
    with make_policy(server.url) as p:
        assert p.complete(["abc", "abc", "abc"], max_new_tokens=5, sampling=GREEDY) == [" cba"] * 3
    assert server.counts["completion_requests"] == 1


def test_sampling_gets_fresh_samples_within_a_run_and_replays_across_runs(server, tmp_path):
    path = tmp_path / "c.sqlite"
    sampling = Sampling(temperature=0.8)
    with make_policy(server.url, cache_path=path) as p:
        a = p.complete(["abc", "abc"], max_new_tokens=12, sampling=sampling)
        b = p.complete(["abc"], max_new_tokens=12, sampling=sampling)
    assert len({a[0], a[1], b[0]}) == 3 and server.counts["completion_requests"] == 3
    with make_policy(server.url, cache_path=path) as rerun:
        assert rerun.complete(["abc", "abc"], max_new_tokens=12, sampling=sampling) == a
        assert rerun.complete(["abc"], max_new_tokens=12, sampling=sampling) == b
    assert server.counts["completion_requests"] == 3


def test_seed_is_part_of_the_sampled_cache_key(server, tmp_path):
    path = tmp_path / "c.sqlite"
    sampling = Sampling(temperature=0.8)
    # seed 1: sampled + greedy are new; seed 1 again: both cached; seed 2: only the sampled one is new
    for seed, new_calls in ((1, 2), (1, 0), (2, 1)):
        before = server.counts["completion_requests"]
        with make_policy(server.url, cache_path=path, seed=seed) as p:
            p.complete(["abc"], max_new_tokens=12, sampling=sampling)
            p.complete(["abc"], max_new_tokens=12, sampling=GREEDY)  # greedy: shared by every seed
        assert server.counts["completion_requests"] - before == new_calls


# -- budget -------------------------------------------------------------------------------
def test_budget_stops_before_the_cap(server):
    cap = 120
    with make_policy(server.url, budget=TokenBudget(cap)) as p:
        done = 0
        with pytest.raises(GuideBudgetExhausted):
            for i in range(100):
                before = server.counts["requests"]
                p.complete([f"{PROMPTS[i % 5]} {i}"], max_new_tokens=12, sampling=GREEDY)
                done += 1
        assert server.counts["requests"] == before  # the refused call sent nothing
        s = p.stats()
    spent = server.counts["prompt_tokens"] + server.counts["completion_tokens"]
    assert done >= 3 and spent <= cap
    assert s["budget_exhausted"] and s["budget_used_tokens"] == spent


def test_budget_refuses_a_whole_batch_up_front(server):
    with make_policy(server.url, budget=30) as p:
        with pytest.raises(GuideBudgetExhausted, match="uncached guide completions"):
            p.complete(PROMPTS, max_new_tokens=12, sampling=GREEDY)
    # nothing billable: no completion request, only the free model listing the cache key reads
    assert server.counts["completion_requests"] == 0 and server.counts["requests"] <= 1


def test_budget_counts_lost_replies():
    with running(make_fault_server(faults=["slow"], slow_s=0.8)) as srv:
        with make_policy(srv.url, timeout=0.3, budget=1000) as p:
            p.complete(["abc"], max_new_tokens=12, sampling=GREEDY)
            s = p.stats()
    # the timed-out attempt was generated (and would be billed) server-side: it is charged
    assert s["possibly_billed_tokens"] > 0
    assert s["budget_used_tokens"] == s["possibly_billed_tokens"] + s["total_tokens"]


def test_concurrency_is_bounded():
    prompts = [f"prompt {i}" for i in range(8)]
    with running(make_fault_server(delay_s=0.15)) as srv:
        with make_policy(srv.url, max_concurrency=3) as p:
            start = time.monotonic()
            assert p.complete(prompts, max_new_tokens=12, sampling=GREEDY) == expected(prompts)
            elapsed = time.monotonic() - start
    assert srv.max_in_flight == 3
    assert elapsed < 8 * 0.15  # overlapped, not one after another


def test_extensions_send_top_k_and_min_tokens():
    policy = EchoPolicy()
    with running(make_fault_server(policy)) as srv:
        with make_policy(srv.url, extensions=True) as p:
            p.complete(["abc"], max_new_tokens=9, min_new_tokens=4, sampling=Sampling(temperature=0.5, top_k=7))
        assert policy.last["min_new_tokens"] == 4 and policy.last["sampling"].top_k == 7
        with make_policy(srv.url) as plain:  # plain OpenAI: neither is sent (the API refuses them)
            plain.complete(["abcd"], max_new_tokens=9, min_new_tokens=4, sampling=Sampling(temperature=0.5, top_k=7))
        assert policy.last["min_new_tokens"] == 0 and policy.last["sampling"].top_k == 0


def test_estimates_calibrate_to_the_servers_token_counts():
    # the server counts one token per character, three times our rough estimate
    cap = 300
    with running(make_fault_server(CharPolicy())) as srv:
        with make_policy(srv.url, budget=cap) as p:
            p.complete(["a first prompt to learn the ratio"], max_new_tokens=12, sampling=GREEDY)
            assert p._ratio == pytest.approx(3.0, rel=0.1)
            with pytest.raises(GuideBudgetExhausted):
                for i in range(100):
                    p.complete([f"{PROMPTS[i % 5]} number {i}"], max_new_tokens=12, sampling=GREEDY)
    assert srv.counts["prompt_tokens"] + srv.counts["completion_tokens"] <= cap


def test_beam_search_and_edge_cases(server):
    with make_policy(server.url) as p:
        with pytest.raises(RlgfError, match="beam"):
            p.complete(["x"], max_new_tokens=5, sampling=Sampling(do_sample=False, num_beams=3))
        assert p.complete([], max_new_tokens=5) == []
        assert p.complete(["x", "y"], max_new_tokens=0) == ["", ""]
    assert server.counts["requests"] == 0
    with pytest.raises(RlgfError, match="http"):
        OpenAIPolicy("openai:echo", base_url="localhost:8000", cache_path=False)
    with pytest.raises(RlgfError, match="timeout"):
        OpenAIPolicy("openai:echo", base_url=server.url, timeout=0, cache_path=False)

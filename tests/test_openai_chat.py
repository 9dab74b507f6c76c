"""The ``openai-chat:`` guide: payloads and parsing as pure functions, roll-ins and each prefill
form against a loopback chat server that checks the request shape, ``auto`` probing, the
refusal when no prefill works, faults survived, and short training runs through it."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from backends import resolve
from backends.base import GREEDY, SAMPLING_OPTIONS, Sampling
from backends.errors import RlgfError
from backends.openai_api.chat import (MalformedResponse, chat_body, check_instruction, check_prefill, decode_request,
                                      encode_request, parse_chat, strip_echo)
from chat_server import ChatServer, form_of
from rlgf_cli.app import app
from tiny_assets import make_tiny_reward

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("torch_one_thread")
KEY = "sk-test-chat-secret-123456"


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("RLGF_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("RLGF_GUIDE_BACKOFF", "0.01")


def chat_guide(server, **options):
    return resolve("openai-chat:chatty", base_url=server.url, cache_path=False, backoff_base=0.01, **options)


# -- pure functions ---------------------------------------------------------------------
def test_roll_in_body_wraps_the_prompt_in_the_instruction():
    body = chat_body("It was a dark", "", system="S", instruction="Go on: {prompt}", prefill="none")
    assert body == {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Go on: It was a dark"}],
                    "extra": {}}


@pytest.mark.parametrize("form, last, extra", [
    ("continue", {"role": "assistant", "content": " and"}, {"continue_final_message": True, "add_generation_prompt": False}),
    ("prefix", {"role": "assistant", "content": " and", "prefix": True}, {}),
    ("trailing", {"role": "assistant", "content": " and"}, {}),
])
def test_prefill_forms(form, last, extra):
    body = chat_body("p", " and", system="", instruction="{prompt}", prefill=form)
    assert body["messages"] == [{"role": "user", "content": "p"}, last] and body["extra"] == extra


def test_instruct_prefill_asks_in_words_and_none_refuses():
    body = chat_body("p", " and", system="", instruction="{prompt}", prefill="instruct")
    assert [m["role"] for m in body["messages"]] == ["user"] and " and" in body["messages"][0]["content"]
    with pytest.raises(ValueError):
        chat_body("p", " and", system="", instruction="{prompt}", prefill="none")


def test_parse_chat_and_its_malformed_replies():
    ok = parse_chat(json.dumps({"choices": [{"index": 0, "message": {"content": "hi"}, "finish_reason": "stop"}],
                                "usage": {"prompt_tokens": 3, "completion_tokens": 1}}))
    assert ok.texts == ["hi"] and ok.finish_reasons == ["stop"] and ok.prompt_tokens == 3
    assert parse_chat({"choices": [{"message": {"content": None}}]}).texts == [""]
    for bad in ('{"choices": [', "[]", {"choices": []}, {"choices": [{"message": {}}]}, {"error": {"message": "x"}}):
        with pytest.raises(MalformedResponse):
            parse_chat(bad)


def test_option_checks_and_request_round_trip():
    assert check_prefill(None) == "auto" and check_prefill("Trailing") == "trailing"
    with pytest.raises(RlgfError, match="--guide-prefill 'sideways'"):
        check_prefill("sideways")
    with pytest.raises(RlgfError, match="no {prompt} placeholder"):
        check_instruction("Continue please")
    assert decode_request(encode_request("a", " b")) == ("a", " b")
    assert strip_echo(" b c", " b") == " c" and strip_echo("c", " b") == "c"


# -- against a loopback chat server --------------------------------------------------------
def test_roll_in_request_shape_and_reply():
    with ChatServer() as server:
        guide = chat_guide(server, system="Be a critic.", instruction="Continue: {prompt}")
        assert guide.complete(["It was"], max_new_tokens=2, sampling=Sampling(top_k=50)) == ["good good"]
        (body,) = server.requests
        assert body["messages"] == [{"role": "system", "content": "Be a critic."},
                                    {"role": "user", "content": "Continue: It was"}]
        assert body["model"] == "chatty" and body["max_tokens"] == 2 and body["temperature"] == 1.0
        assert "top_k" not in body  # OpenAI takes no top_k unless extensions are on
        assert server.auth == [f"Bearer {KEY}"]


@pytest.mark.parametrize("form", ["continue", "prefix", "trailing"])
def test_each_prefill_form_reaches_the_server(form):
    with ChatServer(accepts={form}) as server:
        guide = chat_guide(server, prefill=form)
        assert guide.continue_from(["The film"], [" is"], max_new_tokens=3, sampling=GREEDY) == ["fine good good good"]
        assert form_of(server.requests[-1]) == form and server.requests[-1]["messages"][-1]["content"] == " is"


def test_auto_probes_once_and_says_what_it_found():
    with ChatServer(accepts={"trailing"}) as server:
        guide = chat_guide(server)
        assert guide.prefill == "trailing" and guide.can_continue
        assert ("refused: continue: HTTP 400: prefill form continue is not supported; "
                "prefix: HTTP 400: prefill form prefix is not supported") in guide.probe_note
        probes = len(server.requests)
        guide.continue_from(["a"], [" b"], max_new_tokens=2, sampling=GREEDY)
        guide.continue_from(["c"], [" d"], max_new_tokens=2, sampling=GREEDY)
        assert len(server.requests) == probes + 2 == 5 and guide.stats()["prefill"] == "trailing"


def test_the_probe_note_gives_the_server_s_reason_once_when_it_is_always_the_same():
    """A probe can be refused for a reason that is not the prefill form (a system message longer
    than the model's context): the note must say so, not only 'HTTP 400' thrice."""
    with ChatServer(accepts=set()) as server:
        server.refusal = "This model's maximum context length is 256 tokens"
        guide = chat_guide(server)
        assert guide.prefill == "none"
        assert guide.probe_note == ("prefill none: the server refused every form (continue, prefix, trailing: "
                                    "HTTP 400: This model's maximum context length is 256 tokens)")


def test_no_prefill_refuses_and_names_ppo_pp():
    with ChatServer(accepts=set()) as server:
        guide = chat_guide(server)
        assert guide.prefill == "none" and not guide.can_continue
        with pytest.raises(RlgfError, match="ppo\\+\\+"):
            guide.continue_from(["a"], [" b"], max_new_tokens=2, sampling=GREEDY)
        assert guide.complete(["a"], max_new_tokens=1, sampling=GREEDY) == ["good"]  # roll-ins still work


def test_faults_on_the_chat_endpoint_are_survived(tmp_path):
    with ChatServer() as server:
        server.faults = ["429", "500", "malformed", "drop", "slow"]
        guide = resolve("openai-chat:chatty", base_url=server.url, cache_path=tmp_path / "c.sqlite",
                        backoff_base=0.01, timeout=5)
        assert guide.complete(["x"], max_new_tokens=1, sampling=GREEDY) == ["good"]
        assert guide.stats()["retries"] == 4 and len(server.requests) == 5
        # cached: nothing more is sent
        assert guide.complete(["x"], max_new_tokens=1, sampling=GREEDY) == ["good"] and len(server.requests) == 5
        guide.close()
    assert KEY.encode() not in (tmp_path / "c.sqlite").read_bytes()


# -- training through it ------------------------------------------------------------------
def _train(tmp_path, learner, server, alg, *extra):
    reward = make_tiny_reward(tmp_path / "reward")
    return runner.invoke(app, [
        "train", "--task", "rotten-tomatoes", "--reward-model", str(reward), "--learner", str(learner), "--alg", alg,
        "--guide", "openai-chat:chatty", "--guide-base-url", server.url, "--iterations", "1", "--episodes", "4",
        "--epochs", "1", "--max-new-tokens", "4", "--device", "cpu", "--out", str(tmp_path / alg), *extra])


def test_ppo_pp_and_aggrevated_train_with_a_chat_guide(tmp_path, tiny_causal_dir):
    with ChatServer(accepts={"trailing"}) as server:
        result = _train(tmp_path, tiny_causal_dir, server, "ppo++", "--beta", "1.0")
        assert result.exit_code == 0, (result.output, result.exception)
        roll_ins = [b for b in server.requests if form_of(b) is None]
        assert roll_ins and "movie review" in roll_ins[0]["messages"][-1]["content"]  # the task's instruction
        server.requests.clear()
        result = _train(tmp_path, tiny_causal_dir, server, "aggrevated")
        assert result.exit_code == 0, (result.output, result.exception)
        assert "prefill trailing" in result.output
        assert any(form_of(b) == "trailing" for b in server.requests)
    summary = json.loads((tmp_path / "aggrevated" / "summary.json").read_text())
    assert summary["guide_stats"]["prefill"] == "trailing" and summary["guide_stats"]["prefill_approximate"] is False
    assert KEY not in result.output and KEY not in (tmp_path / "aggrevated" / "summary.json").read_text()


def test_aggrevated_refuses_a_chat_guide_without_prefill(tmp_path, tiny_causal_dir):
    with ChatServer(accepts=set()) as server:
        result = _train(tmp_path, tiny_causal_dir, server, "aggrevated")
    lines = [x for x in result.output.splitlines() if x.startswith("[error]")]
    assert result.exit_code == 1 and len(lines) == 1 and "Traceback" not in result.output, result.output
    assert "cannot continue" in lines[0] and "ppo++" in result.output
    assert not (tmp_path / "aggrevated" / "final").exists()


def test_extensions_auto_reads_who_serves_the_model(tiny_causal_dir):
    from tiny_assets import served

    with ChatServer() as server:  # an unknown server: neither top_k nor min_tokens is sent
        guide = chat_guide(server, extensions="auto")
        guide.complete(["x"], max_new_tokens=2, min_new_tokens=2, sampling=Sampling(top_k=50))
        assert not guide.extensions and "top_k" not in server.requests[-1] and "min_tokens" not in server.requests[-1]
        assert server.requests[-1]["top_p"] == 1.0 and server.requests[-1]["temperature"] == 1.0  # always explicit
    with pytest.raises(RlgfError, match="--guide-extensions 'maybe'"):
        chat_guide(server, extensions="maybe")
    with served(tiny_causal_dir) as srv:  # rlgf serve says owned_by "rlgf"
        guide = resolve("openai:tiny", base_url=srv.url, cache_path=False, extensions="auto")
        assert guide.extensions and guide.sampling_options == SAMPLING_OPTIONS


def test_eval_of_a_chat_policy_uses_the_tasks_instruction(tmp_path):
    reward = make_tiny_reward(tmp_path / "reward")
    with ChatServer() as server:
        result = runner.invoke(app, ["eval", "-p", "openai-chat:chatty", "--policy-base-url", server.url,
                                     "--reward-model", str(reward), "--reference", "none", "--limit", "2",
                                     "--max-new-tokens", "3", "--device", "cpu", "--json", str(tmp_path / "e.json"),
                                     "--guide-concurrency", "2", "--quiet"])
        assert result.exit_code == 0, (result.output, result.exception)
        users = [b["messages"][-1]["content"] for b in server.requests]
        assert len(users) == 2 and all("movie review" in u for u in users)
    (res,) = json.loads((tmp_path / "e.json").read_text())["results"]
    assert res["n"] == 2 and 0.0 <= res["metrics"]["sentiment"] <= 1.0

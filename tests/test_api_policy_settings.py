"""An API policy's transport settings and errors, for a guide and for the policy ``eval`` scores.

``$RLGF_GUIDE_MAX_RETRIES`` and its siblings apply to every API model rlgf drives (the failure
hint names them, so they must work where the hint appears), a short key of a local server is
not masked inside the words of an error, and "1 time" reads as English. Real loopback servers."""

from __future__ import annotations

import socket
import time

import pytest
from typer.testing import CliRunner

from backends.base import GREEDY
from backends.errors import RlgfError
from backends.openai_api.policy import OpenAIPolicy
from fault_server import make_fault_server, running
from rlgf_cli.app import app

runner = CliRunner()


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "RLGF_GUIDE_TIMEOUT", "RLGF_GUIDE_MAX_RETRIES",
                "RLGF_GUIDE_BACKOFF"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("RLGF_CACHE_DIR", str(tmp_path / "cache"))


def _free_port() -> int:
    with socket.socket() as s:  # free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_eval_of_an_api_policy_takes_its_retries_from_the_environment(tmp_path, monkeypatch):
    data = tmp_path / "prompts.jsonl"
    data.write_text('{"prompt": "Say a:", "split": "test"}\n{"prompt": "Say b:", "split": "test"}\n', encoding="utf-8")
    reward = tmp_path / "ok.py"
    reward.write_text("def reward(prompts, completions, references):\n    return [1.0 for _ in completions]\n",
                      encoding="utf-8")
    monkeypatch.setenv("OPENAI_API_KEY", "x")
    monkeypatch.setenv("RLGF_GUIDE_MAX_RETRIES", "0")
    monkeypatch.setenv("RLGF_GUIDE_BACKOFF", "5")  # a retry would take seconds: none may happen
    port = _free_port()
    start = time.monotonic()
    result = runner.invoke(app, ["eval", "--policy", "openai:m", "--policy-base-url", f"http://127.0.0.1:{port}/v1",
                                 "--task", "prompts", "--data", str(data), "--reward", f"{reward}:reward",
                                 "--limit", "1", "--reference", "none", "--device", "cpu"])
    lines = [x for x in result.output.splitlines() if x.startswith("[error]")]
    assert result.exit_code == 1 and len(lines) == 1 and "Traceback" not in result.output, result.output
    assert f"127.0.0.1:{port}" in lines[0] and "failed 1 time;" in lines[0], lines[0]
    assert time.monotonic() - start < 30


def test_a_short_key_is_masked_only_where_it_stands_alone():
    with running(make_fault_server(faults=["malformed"] * 2)) as srv:
        policy = OpenAIPolicy("openai:echo", base_url=srv.url, api_key="x", cache_path=False, max_retries=1,
                              backoff_base=0.001, timeout=5.0)
        with policy as p, pytest.raises(RlgfError) as err:
            p.complete(["abc"], max_new_tokens=5, sampling=GREEDY)
    assert "failed 2 times" in err.value.message and "not JSON" in err.value.message, err.value.message
    assert "***" not in err.value.message  # "Expecting value", not "E***pecting value"
    transport = policy._transport
    assert transport.redact("key x, x-ray, 'x'") == "key ***, x-ray, '***'"
    long = OpenAIPolicy("openai:echo", base_url=srv.url, api_key="local-key-0123456789", cache_path=False)._transport
    assert long.redact("Bearer local-key-0123456789abc") == "Bearer ***abc"  # a long key wherever it appears

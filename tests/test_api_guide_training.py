"""Training with a black-box API guide: ``rlgf train --guide openai:MODEL --guide-base-url URL``.

Every run goes through the CLI (typer's runner, in this process) against a real
OpenAI-compatible server on 127.0.0.1 that puts a tiny transformers model behind
``POST /v1/completions`` (``rlgf serve``'s handler; ``tests/fault_server.py``). The
runs that compare results use a server in its own process: a guide that samples re-seeds
*its* torch RNG per request, which must not be the trainer's. The learner and the guide
share the tiny byte tokenizer, but the ``openai:`` path always hands off text.

The guide's transport settings come from ``RLGF_GUIDE_TIMEOUT`` / ``RLGF_GUIDE_MAX_RETRIES``
/ ``RLGF_GUIDE_BACKOFF`` (tiny backoff here); its completion cache lives under
``$RLGF_CACHE_DIR/openai/`` (a fresh folder per test).
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from backends.openai_api import token_budget
from fault_server import FaultServerProcess, make_fault_server, running
from rlgf_cli.app import app

pytestmark = pytest.mark.usefixtures("torch_one_thread")

runner = CliRunner()
MODEL = "guide"
SECRET = "sk-rlgf-Recognisable-SECRET-4c1d9e77a2b3"



# -- fixtures ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reward_dir(tmp_path_factory):
    """A tiny randomly initialised sentiment classifier with the byte tokenizer."""
    from transformers import BertConfig, BertForSequenceClassification

    from conftest import make_byte_tokenizer

    tok = make_byte_tokenizer()
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=512, num_labels=2, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("api-reward")
    BertForSequenceClassification(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def guide_dir(tmp_path_factory):
    """The guide behind the server: another tiny Llama (other weights, same byte tokenizer)."""
    from conftest import make_tiny_causal

    model, tok = make_tiny_causal(seed=1)
    path = tmp_path_factory.mktemp("api-guide")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def server(guide_dir):
    """``rlgf serve``'s handler around the tiny guide, in a process of its own."""
    with FaultServerProcess(f"hf:{guide_dir}", model_name=MODEL) as srv:
        yield srv


def _isolate(mp: pytest.MonkeyPatch, cache: Path, empty_tiktoken: Path) -> None:
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID", "OPENAI_LOG",
                "RLGF_GUIDE_TIMEOUT", "RLGF_GUIDE_MAX_RETRIES", "RLGF_GUIDE_BACKOFF"):
        mp.delenv(var, raising=False)
    mp.setenv("RLGF_CACHE_DIR", str(cache))
    mp.setenv("RLGF_GUIDE_BACKOFF", "0.01")
    mp.setenv("RLGF_GUIDE_TIMEOUT", "10")
    empty_tiktoken.mkdir(parents=True, exist_ok=True)
    mp.setenv("TIKTOKEN_CACHE_DIR", str(empty_tiktoken))  # the same (rough) estimates on every machine
    token_budget.load_encoding_offline.cache_clear()


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path):
    _isolate(monkeypatch, tmp_path / "cache", tmp_path / "tiktoken")
    yield
    token_budget.load_encoding_offline.cache_clear()


def api_args(learner, reward, out, url, *extra, alg="d2lols", iterations=2):
    return [
        "train", "--task", "rotten-tomatoes", "--alg", alg, "--guide", f"openai:{MODEL}", "--guide-base-url", url,
        "--learner", str(learner), "--reward-model", str(reward), "--out", str(out),
        "--iterations", str(iterations), "--episodes", "4", "--minibatch-size", "4", "--epochs", "1",
        "--max-new-tokens", "6", "--lr", "1e-3", "--seed", "3", "--device", "cpu", "--quiet", *extra,
    ]


#: the reference configuration: D2LOLS switching from AggreVaTeD to PPO++ half-way
REF = ("--alpha", "0.5", "--ppopp-beta", "0.5", "--aggrevated-beta", "0.5")


def invoke(args, code=0):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, (result.output, result.exception)
    return result


def read_metrics(out):
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def results(out):
    """What a run computed: its metrics without timings and without the ``guide_api_*`` counters
    (those count this process's requests, retries and cache hits, which faults, the cache and
    a resume change; the tests compare them separately)."""
    return [{k: v for k, v in m.items() if not k.startswith(("time", "guide_api_"))} for m in read_metrics(out)]


def weights(out, folder="final"):
    from safetensors.torch import load_file

    return load_file(Path(out) / folder / "model.safetensors")


def same_weights(a, b, atol=0.0):
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=atol, rtol=0) for k in a)


def completions_at(server) -> int:
    return server.state()["counts"]["completion_requests"]


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("[error]")]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_causal_dir, reward_dir, server):
    """One healthy D2LOLS run (its cache, metrics, weights and what the server saw), shared."""
    root = tmp_path_factory.mktemp("api-reference")
    with pytest.MonkeyPatch.context() as mp:
        _isolate(mp, root / "cache", root / "tiktoken")
        before = server.state()["counts"]
        invoke(api_args(tiny_causal_dir, reward_dir, root / "run", server.url, *REF))
        after = server.state()["counts"]
    token_budget.load_encoding_offline.cache_clear()
    seen = {k: after[k] - before[k] for k in after}
    return {"out": root / "run", "cache": root / "cache", "server": seen}


# -- 1. end to end ----------------------------------------------------------------------
def test_d2lols_trains_against_an_openai_compatible_server(reference):
    """D2LOLS with an ``openai:`` guide trains end to end; the metrics account for the guide."""
    out = reference["out"]
    metrics = read_metrics(out)
    assert [m["iteration"] for m in metrics] == [1, 2]
    assert [m["scheme"] for m in metrics] == ["aggrevated", "ppo++"]  # α 0.5 of 2 iterations
    first = metrics[0]
    # AggreVaTeD: the guide rolls out every episode, so the guide wrote tokens through the API
    assert first["guide_calls"] >= 4 and first["guide_tokens"] > 0 and first["learner_tokens"] >= 0
    for m in metrics:
        for key in ("guide_api_calls", "guide_api_completions", "guide_api_cache_hits", "guide_api_api_completions",
                    "guide_api_prompt_tokens", "guide_api_completion_tokens", "guide_api_total_tokens",
                    "guide_api_requests", "guide_api_retries"):
            assert isinstance(m[key], int), key
        assert m["guide_api_cost_usd"] is None  # no price known for a local model, none given
    last = metrics[-1]
    seen = reference["server"]
    # what the run counted is what the server did (usage comes from the server's replies)
    assert last["guide_api_calls"] == seen["completion_requests"] > 0
    assert last["guide_api_api_completions"] == seen["completions"]
    assert last["guide_api_prompt_tokens"] == seen["prompt_tokens"]
    assert last["guide_api_completion_tokens"] == seen["completion_tokens"]
    assert last["guide_api_total_tokens"] == seen["prompt_tokens"] + seen["completion_tokens"]
    assert last["guide_api_cache_hits"] == 0 and last["guide_api_retries"] == 0
    assert last["guide_api_completions"] == sum(m["guide_calls"] for m in metrics)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped"] is None and summary["guide"] == f"openai:{MODEL}"
    assert summary["guide_stats"]["calls"] == last["guide_api_calls"]
    assert summary["guide_stats"]["total_tokens"] == last["guide_api_total_tokens"]
    # the cache holds every completion the server made
    assert (reference["cache"] / "openai" / "completions.sqlite").is_file()

    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(out / "final")
    assert (out / "final" / "guide_critic").is_dir(), "AggreVaTeD/D2LOLS train the guide's critic"


@pytest.mark.parametrize("alg, beta", [("ppo++", "1.0"), ("aggrevated", "0.5")])
def test_ppopp_and_aggrevated_with_an_api_guide(alg, beta, tmp_path, tiny_causal_dir, reward_dir, server):
    """PPO++ (guide rolls in: it continues the prompt) and AggreVaTeD (guide rolls out: it
    continues prompt + learner prefix) both run through the text hand-off."""
    out = tmp_path / "run"
    invoke(api_args(tiny_causal_dir, reward_dir, out, server.url, "--beta", beta, alg=alg, iterations=1))
    (m,) = read_metrics(out)
    assert m["scheme"] == alg
    assert m["guide_calls"] > 0 and m["guide_tokens"] > 0 and m["guide_api_calls"] > 0
    assert m["learner_tokens"] + m["guide_tokens"] <= 4 * 6
    if alg == "ppo++":  # the learner writes every token after the restart point
        assert m["learner_tokens"] > 0
    assert (out / "final" / "model.safetensors").is_file()


# -- 2. faults --------------------------------------------------------------------------
FAULTS = ["429", "500", "slow", "malformed", "drop"]


def test_a_faulty_server_gives_the_same_run_as_a_healthy_one(reference, tmp_path, monkeypatch, tiny_causal_dir,
                                                             reward_dir, server):
    """429 (Retry-After), 500, a reply slower than the timeout, malformed JSON and a dropped
    connection are retried; the run's results equal the healthy run's with the same seed."""
    monkeypatch.setenv("RLGF_GUIDE_TIMEOUT", "1.5")
    server.set_faults(FAULTS, retry_after="0.2", slow_s=2.5)
    out = tmp_path / "faulty"
    invoke(api_args(tiny_causal_dir, reward_dir, out, server.url, *REF))
    state = server.state()
    assert state["faults_left"] == 0 and state["fault_log"][-len(FAULTS):] == FAULTS
    metrics = read_metrics(out)
    assert metrics[-1]["guide_api_retries"] >= len(FAULTS)
    assert metrics[-1]["guide_api_possibly_billed_tokens"] > 0  # the slow, malformed and dropped replies
    assert results(out) == results(reference["out"])
    ref = read_metrics(reference["out"])
    for key in ("guide_api_calls", "guide_api_api_completions", "guide_api_total_tokens"):
        assert metrics[-1][key] == ref[-1][key], key
    assert same_weights(weights(out), weights(reference["out"]))


# -- 3. cache ---------------------------------------------------------------------------
def test_a_repeated_run_is_served_from_the_cache(reference, tmp_path, monkeypatch, tiny_causal_dir, reward_dir, server):
    """The same run again, with the first run's cache: not one completion request reaches the server."""
    monkeypatch.setenv("RLGF_CACHE_DIR", str(reference["cache"]))
    before = completions_at(server)
    out = tmp_path / "again"
    invoke(api_args(tiny_causal_dir, reward_dir, out, server.url, *REF))
    assert completions_at(server) == before
    last = read_metrics(out)[-1]
    assert last["guide_api_calls"] == 0 and last["guide_api_requests"] == 0 and last["guide_api_total_tokens"] == 0
    assert last["guide_api_cache_hits"] == last["guide_api_completions"] > 0
    assert results(out) == results(reference["out"])
    assert same_weights(weights(out), weights(reference["out"]))


# -- 4. budget --------------------------------------------------------------------------
def test_a_budget_stops_the_run_cleanly_and_resume_pays_nothing_twice(reference, tmp_path, tiny_causal_dir,
                                                                      reward_dir, server):
    ref = read_metrics(reference["out"])
    first, total = ref[0]["guide_api_total_tokens"], ref[-1]["guide_api_total_tokens"]
    budget = first + (total - first) // 2  # the first iteration fits, the second does not
    out = tmp_path / "run"
    before = server.state()["counts"]
    result = invoke(api_args(tiny_causal_dir, reward_dir, out, server.url, *REF, "--guide-budget-tokens", budget))
    after = server.state()["counts"]
    assert "guide budget exhausted" in result.output and "stopped early" in result.output
    assert f"continue with rlgf train --resume {out} --guide-budget-tokens N" in result.output  # the folder to go on
    assert not error_lines(result.output)
    spent = (after["prompt_tokens"] - before["prompt_tokens"]) + (after["completion_tokens"] - before["completion_tokens"])
    assert 0 < spent <= budget, "the server's own count must stay within the budget"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped"] and "guide budget exhausted" in summary["stopped"]
    assert summary["iterations"] == 1 and summary["guide_stats"]["budget_exhausted"] is True
    assert summary["guide_stats"]["budget_used_tokens"] <= budget
    stats = summary["guide_stats"]  # a refused batch is not counted as returned completions
    assert stats["completions"] == stats["api_completions"] + stats["cache_hits"]
    state = json.loads((out / "final" / "trainer_state.json").read_text())
    assert state["iteration"] == 1 and state["guide_budget_used_tokens"] == summary["guide_stats"]["budget_used_tokens"]
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(out / "final")  # the final checkpoint is whole
    assert [m["iteration"] for m in read_metrics(out)] == [1]

    # more budget: the run goes on to the end; calls paid before the stop come from the cache
    result = invoke(["train", "--resume", out, "--guide-budget-tokens", 10 * total, "--quiet"])
    resumed = server.state()["counts"]
    assert [m["iteration"] for m in read_metrics(out)] == [1, 2]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped"] is None and summary["iterations"] == 2
    # nothing was paid twice: both halves together made exactly the uninterrupted run's requests
    assert resumed["completion_requests"] - before["completion_requests"] == reference["server"]["completion_requests"]
    assert resumed["completions"] - before["completions"] == reference["server"]["completions"]
    # ... and the stop and resume did not change the run
    assert results(out) == results(reference["out"])
    assert same_weights(weights(out), weights(reference["out"]), atol=1e-6)


def test_a_budget_below_the_first_calls_is_never_passed(tmp_path, tiny_causal_dir, reward_dir, server):
    """Before the server has reported usage its tokenizer is unknown (here one token per byte,
    three times our rough estimate), so the first calls are reserved for the worst case: the
    server's count never passes the budget, even when the very first batch would."""
    budget = 100  # AggreVaTeD with β 0: the guide writes all 4 episodes in one batch (≈ 240 tokens)
    before = server.state()["counts"]
    out = tmp_path / "run"
    result = invoke(api_args(tiny_causal_dir, reward_dir, out, server.url, "--beta", "0", "--guide-budget-tokens",
                             budget, alg="aggrevated"), code=1)
    after = server.state()["counts"]
    spent = (after["prompt_tokens"] - before["prompt_tokens"]) + (after["completion_tokens"] - before["completion_tokens"])
    assert spent <= budget, (spent, result.output)
    # nothing trained: one error, and no final/ that would only be the initial learner
    lines = error_lines(result.output)
    assert len(lines) == 1 and "nothing was trained" in lines[0] and "4 uncached guide completions" in lines[0], lines
    assert "raise --guide-budget-tokens (now 100)" in lines[0] and "Traceback" not in result.output
    assert not (out / "final").exists() and not (out / "summary.json").exists()


# -- 5. the key -------------------------------------------------------------------------
def _files_holding(root: Path, needle: bytes) -> list[str]:
    return [str(p) for p in Path(root).rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_the_key_is_sent_but_never_written_or_shown(tmp_path, monkeypatch, tiny_causal_dir, reward_dir, guide_dir):
    from backends import resolve

    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    cache = tmp_path / "cache"
    with running(make_fault_server(resolve(f"hf:{guide_dir}", device="cpu"), api_key=SECRET, model_name=MODEL)) as srv:
        out = tmp_path / "run"
        result = invoke(api_args(tiny_causal_dir, reward_dir, out, srv.url, *REF, "--guide-price-per-1k", "0.002",
                                 "--json", "-"))
        assert srv.counts["completion_requests"] > 0 and srv.counts["errors"] == 0  # the key was accepted
        summary = json.loads(result.stdout)
        assert summary["guide_stats"]["cost_usd"] > 0
        for needle in (SECRET.encode(), SECRET[-20:].encode()):
            assert not _files_holding(out, needle), "the key must not be written into the run"
            assert not _files_holding(cache, needle), "the key must not be written into the cache"
            assert needle.decode() not in result.output and needle.decode() not in result.stderr
        assert list((cache / "openai").glob("completions.sqlite*")), "the cache was written (and searched)"

        # a wrong key: one [error] line, exit 1, no traceback, neither key shown
        monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong-key-0000000000000000")
        monkeypatch.setenv("RLGF_CACHE_DIR", str(tmp_path / "cold"))  # else the cache answers everything
        bad = invoke(api_args(tiny_causal_dir, reward_dir, tmp_path / "bad", srv.url, *REF), code=1)
    lines = error_lines(bad.output)
    assert len(lines) == 1 and "rejected the API key" in lines[0] and "OPENAI_API_KEY" in lines[0], bad.output
    assert "Traceback" not in bad.output and SECRET not in bad.output and "0000000000000000" not in bad.output
    assert not (tmp_path / "bad").exists(), "the guide is checked before the run folder is made"


# -- 6. an unreachable guide ------------------------------------------------------------
def test_a_guide_that_goes_away_mid_run_stops_it_with_the_checkpoint_intact(tmp_path, monkeypatch, tiny_causal_dir,
                                                                            reward_dir, guide_dir):
    from backends import resolve
    from rlgf_cli.commands import progress

    monkeypatch.setenv("RLGF_GUIDE_MAX_RETRIES", "2")
    srv = make_fault_server(resolve(f"hf:{guide_dir}", device="cpu"), model_name=MODEL)
    real = progress.TrainProgress

    class StopServerAfterFirstCheckpoint(real):
        def __call__(self, event, payload):
            if event == "checkpoint" and payload["path"].endswith("iter-0001") and not srv.dead:
                srv.stop_answering()  # the guide dies between iterations 1 and 2
            return super().__call__(event, payload)

    monkeypatch.setattr(progress, "TrainProgress", StopServerAfterFirstCheckpoint)
    out = tmp_path / "run"
    with running(srv):
        result = invoke(api_args(tiny_causal_dir, reward_dir, out, srv.url, *REF, "--iterations", "3",
                                 "--save-every", "1"), code=1)
    lines = error_lines(result.output)
    assert len(lines) == 1 and "failed 3 times" in lines[0] and "connection" in lines[0].lower(), result.output
    assert "--resume" in lines[0]
    assert "Traceback" not in result.output
    ckpt = out / "checkpoints" / "iter-0001"
    assert json.loads((ckpt / "trainer_state.json").read_text())["iteration"] == 1
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(ckpt)
    assert not (out / "final").exists() and not list(out.rglob(".tmp-*"))
    assert [m["iteration"] for m in read_metrics(out)] == [1]
    from rlgf_cli.training.run import latest_checkpoint

    assert latest_checkpoint(out) == ckpt
    # the guide is back (at another address): the run continues from that checkpoint to the end
    with running(make_fault_server(resolve(f"hf:{guide_dir}", device="cpu"), model_name=MODEL)) as again:
        invoke(["train", "--resume", out, "--guide-base-url", again.url, "--quiet"])
    assert [m["iteration"] for m in read_metrics(out)] == [1, 2, 3]
    assert json.loads((out / "final" / "trainer_state.json").read_text())["iteration"] == 3


def test_a_guide_with_nothing_listening_is_one_error(tmp_path, monkeypatch, tiny_causal_dir, reward_dir):
    monkeypatch.setenv("RLGF_GUIDE_MAX_RETRIES", "1")
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = invoke(api_args(tiny_causal_dir, reward_dir, tmp_path / "run", f"http://127.0.0.1:{port}/v1", *REF),
                    code=1)
    lines = error_lines(result.output)
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0] and "Traceback" not in result.output, result.output


def test_guide_transport_settings_from_the_environment(monkeypatch):
    from backends.errors import RlgfError
    from rlgf_cli.training.config import TrainConfig
    from rlgf_cli.training.run import guide_options

    cfg = TrainConfig(alg="ppo++", guide="openai:m", guide_base_url="http://127.0.0.1:1/v1")
    monkeypatch.setenv("RLGF_GUIDE_TIMEOUT", "2.5")
    monkeypatch.setenv("RLGF_GUIDE_MAX_RETRIES", "0")
    opts = guide_options(cfg)
    assert (opts["timeout"], opts["max_retries"], opts["backoff_base"]) == (2.5, 0, 0.01)
    assert guide_options(TrainConfig(alg="ppo++", guide="hf:x")) == {}
    monkeypatch.setenv("RLGF_GUIDE_MAX_RETRIES", "many")
    with pytest.raises(RlgfError, match="RLGF_GUIDE_MAX_RETRIES"):
        guide_options(cfg)


def test_a_missing_key_is_found_before_the_learner_or_the_reward_loads(tmp_path, monkeypatch, tiny_causal_dir,
                                                                       reward_dir):
    import rlgf_cli.training.run as run_module

    def too_late(*args, **kwargs):
        raise AssertionError("the learner was loaded before the key was checked")

    monkeypatch.setattr(run_module, "load_policy", too_late)
    args = api_args(tiny_causal_dir, reward_dir, tmp_path / "run", "unused")
    at = args.index("--guide-base-url")
    del args[at:at + 2]  # api.openai.com, with no OPENAI_API_KEY (removed by _env)
    result = invoke(args, code=1)
    lines = [x for x in result.output.splitlines() if x.startswith("[error]")]
    assert len(lines) == 1 and "needs an API key" in lines[0] and "OPENAI_API_KEY" in lines[0], result.output
    assert not (tmp_path / "run").exists()

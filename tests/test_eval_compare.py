"""``rlgf eval`` side by side: checkpoints and an ``openai:`` policy on loopback, seeds, files."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from backends.base import Sampling
from backends.errors import RlgfError
from rlgf_cli.app import app
from rlgf_cli.evaluation.decoding import resolve_sampling
from rlgf_cli.evaluation.report import mean_std
from tiny_assets import make_tiny_checkpoint, make_tiny_reward, served

pytestmark = pytest.mark.usefixtures("torch_one_thread")
runner = CliRunner()


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path):
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("RLGF_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def assets(tmp_path_factory, tiny_causal_dir):
    root = tmp_path_factory.mktemp("eval-assets")
    return {
        "reward": make_tiny_reward(root / "reward"),
        "a": make_tiny_checkpoint(root / "run-a" / "final", tiny_causal_dir, seed=1),
        "b": make_tiny_checkpoint(root / "run-b" / "final", tiny_causal_dir, seed=2),
    }


def test_two_checkpoints_and_an_api_policy_side_by_side(tmp_path, assets, tiny_causal_dir):
    report, samples, md = tmp_path / "eval.json", tmp_path / "samples.jsonl", tmp_path / "eval.md"
    with served(tiny_causal_dir, "tiny") as server:
        result = runner.invoke(app, [
            "eval", "-c", str(assets["a"]), "-c", str(assets["b"]), "-p", "openai:tiny",
            "--policy-base-url", server.url, "--reward-model", str(assets["reward"]),
            "--limit", "4", "--seeds", "2", "--max-new-tokens", "6", "--device", "cpu",
            "--json", str(report), "--samples", str(samples), "--markdown", str(md),
        ])
        assert result.exit_code == 0, (result.output, result.exception)
        served_completions = server.counts["completions"]
    data = json.loads(report.read_text())
    names = [r["policy"] for r in data["results"]]
    assert names == [str(assets["a"]), str(assets["b"]), "openai:tiny"]
    for r in data["results"]:
        assert r["n"] == 4 and r["seeds"] == [0, 1] and len(r["per_seed"]) == 2
        assert set(r["metrics_std"]) == set(r["metrics"]) and "sentiment" in r["metrics"]
        assert 0.0 <= r["metrics"]["sentiment"] <= 1.0
        assert r["metrics"]["sentiment"] == pytest.approx(
            sum(s["metrics"]["sentiment"] for s in r["per_seed"]) / 2)
    for r in data["results"][:2]:  # one model, one set of references: the same perplexity at every seed
        assert r["metrics_std"]["perplexity"] == 0.0
    api = data["results"][2]
    assert "perplexity" not in api["metrics"]  # an API model cannot score text
    assert "output_perplexity" in api["metrics"]  # …but the reference model scores its output
    assert served_completions == 4 * 2  # two seeds, four prompts, through the server
    # one table on stdout, with every policy in it
    assert result.stdout.count("sentiment") == 1
    for name in ("run-a/final", "openai:tiny", "±"):
        assert name in result.stdout.replace("\n", "")
    # the task's facts after it: one line, no unknowns, no dict reprs, the precision not said twice
    (caption,) = [line for line in result.stderr.splitlines() if "splits: " in line]
    assert "splits: train 9987, val 1248, test 1248" in caption and "task: rotten-tomatoes" in caption
    assert "None" not in caption and "{" not in caption and "precision" not in caption
    # samples: every generation of every policy and seed, with its score
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    assert len(rows) == 3 * 2 * 4
    for row in rows:
        assert {"policy", "seed", "index", "prompt", "completion", "reference", "scores"} <= set(row)
        assert 0.0 <= row["scores"]["reward"] <= 1.0
    by = {(r["policy"], r["seed"], r["index"]) for r in rows}
    assert len(by) == 24
    # the per-sample rewards average to the sentiment metric of that seed
    first = [r["scores"]["reward"] for r in rows if r["policy"] == "openai:tiny" and r["seed"] == 0]
    assert sum(first) / 4 == pytest.approx(api["per_seed"][0]["metrics"]["sentiment"], abs=1e-6)
    text = md.read_text()
    assert text.count("\n| ") == 4 and "openai:tiny" in text and " ± " in text


def test_a_frozen_model_scores_the_same_texts_once():
    from rlgf_cli.evaluation.evaluate import remember_scores

    class Scorer:
        calls = 0

        def sequence_nll(self, contexts, texts, batch_size=16):
            self.calls += 1
            return [(float(len(t)), len(t)) for t in texts]

    scorer = Scorer()
    remember_scores(scorer)
    remember_scores(scorer)  # a second wrap is a no-op
    assert scorer.sequence_nll(["", "a"], ["xy", "z"]) == [(2.0, 2), (1.0, 1)]
    assert scorer.sequence_nll(["", "a"], ["xy", "z"], 4) == [(2.0, 2), (1.0, 1)] and scorer.calls == 1
    assert scorer.sequence_nll(["", "a"], ["xy", "zz"]) == [(2.0, 2), (2.0, 2)] and scorer.calls == 2
    remember_scores(None)  # nothing to wrap (an API policy)


def test_deterministic_decoding_runs_once(tmp_path, assets):
    report = tmp_path / "greedy.json"
    result = runner.invoke(app, [
        "eval", "-c", str(assets["a"]), "--reward-model", str(assets["reward"]), "--limit", "2",
        "--seeds", "3", "--decoding", "greedy", "--max-new-tokens", "4", "--device", "cpu",
        "--json", str(report), "--quiet",
    ])
    assert result.exit_code == 0, (result.output, result.exception)
    (r,) = json.loads(report.read_text())["results"]
    assert r["decoding"] == "greedy" and r["seeds"] == [0] and r["metrics_std"] == {}


@pytest.mark.parametrize("args, message", [
    ([], "nothing to evaluate"),
    (["-p", "smollm2", "--seeds", "0"], "--seeds"),
    (["-p", "smollm2", "-p", "smollm2"], "given twice"),
    (["-p", "smollm2", "--decoding", "nucleus"], "unknown decoding"),
    (["-p", "smollm2", "--decoding", "greedy", "--temperature", "0.7"], "does not apply"),
    (["-p", "smollm2", "--top-p", "0"], "--top-p"),
    (["-p", "smollm2", "--temperature", "3"], "--temperature must be in [0, 2]"),  # as train and serve
    (["-c", "/no/such/run"], "checkpoint folder not found"),
])
def test_bad_input_is_one_error_line(args, message):
    result = runner.invoke(app, ["eval", *args])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("[error]") and message in lines[0]


@pytest.mark.parametrize("command", ["eval", "difficulty"])
@pytest.mark.parametrize("spec, message", [
    ("openai:some-model", "needs an API key"),
    ("nope:x", "unknown backend 'nope'"),
    ("EMPTY_FOLDER", "config.json missing"),
])
def test_a_bad_policy_spec_is_found_before_the_task_or_any_model_loads(command, spec, message, monkeypatch, tmp_path):
    """A missing key or an unknown backend: one error line before the task's reward is prepared
    (which the first time trains the embedded classifier) and before the reference model loads."""
    import rlgf_cli.evaluation.evaluate as evaluate

    def too_late(*args, **kwargs):
        raise AssertionError("the task was built before the policy specs were checked")

    monkeypatch.setattr(evaluate, "build_eval_task", too_late)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    spec = str(tmp_path) if spec == "EMPTY_FOLDER" else spec  # a folder with no model in it
    result = runner.invoke(app, [command, "-p", spec, "--limit", "2"])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1, result.output
    assert len(lines) == 1 and lines[0].startswith("[error]") and message in lines[0], result.output


def test_resolve_sampling():
    task_sampling = Sampling(do_sample=True, top_k=50)
    assert resolve_sampling(task_sampling) == task_sampling
    assert resolve_sampling(task_sampling, "greedy") == Sampling(do_sample=False)
    assert resolve_sampling(task_sampling, "beam").num_beams == 5
    assert resolve_sampling(task_sampling, num_beams=3) == Sampling(do_sample=False, num_beams=3)
    assert resolve_sampling(task_sampling, temperature=0.7) == Sampling(do_sample=True, top_k=50, temperature=0.7)
    assert resolve_sampling(task_sampling, temperature=0) == Sampling(do_sample=False)
    beam = Sampling(do_sample=False, num_beams=5)  # CommonGen's default
    assert resolve_sampling(beam, top_p=0.9) == Sampling(do_sample=True, top_p=0.9)
    assert resolve_sampling(beam, "sample") == Sampling(do_sample=True)
    assert resolve_sampling(beam, num_beams=1) == Sampling(do_sample=False)
    with pytest.raises(RlgfError):
        resolve_sampling(beam, "beam", top_k=5)


def test_mean_std():
    assert mean_std([1.0]) == (1.0, None)
    mean, std = mean_std([1.0, 2.0, 3.0])
    assert mean == 2.0 and std == pytest.approx(1.0)


def test_a_shared_decoding_goes_into_the_title_and_mixed_ones_get_a_column():
    from rlgf_cli.commands.eval import eval_markdown, table_rows

    def result(policy, decoding):
        return {"policy": policy, "task": "t", "split": "test", "n": 4, "decoding": decoding,
                "metrics": {"sentiment": 0.5}}

    sampling = "sampling (temperature 1, top-k 50)"
    title, columns, rows, numeric = table_rows({"results": [result("a", sampling), result("b", sampling)]})
    assert title == f"t · test split · n=4 · {sampling}"
    assert columns == ["policy", "sentiment"] and rows == [["a", "0.5000"], ["b", "0.5000"]] and numeric == 1
    report = {"results": [result("a", sampling), result("b", "greedy")]}
    title, columns, rows, numeric = table_rows(report)
    assert title == "t · test split · n=4" and columns == ["policy", "decoding", "sentiment"] and numeric == 2
    assert [r[1] for r in rows] == [sampling, "greedy"]
    assert "| policy | decoding | sentiment |" in eval_markdown(report)


def test_table_numbers_have_fixed_decimals_per_size_and_no_negative_zero():
    """`.4g` gave 261 beside 268.3, 270 ± 1.0292 and, for large perplexities, 1.234e+04."""
    from rlgf_cli.evaluation.report import fmt, fmt_mean_std

    assert [fmt(261.0), fmt(268.34), fmt(12345.678)] == ["261.0", "268.3", "12345.7"]
    assert fmt_mean_std(270.04, 1.0292) == "270.0 ± 1.0" and fmt_mean_std(0.6, 0.01234) == "0.6000 ± 0.0123"
    assert fmt(-0.00001) == "0.0000" and fmt(-0.5) == "-0.5000" and fmt(None) == "–"

"""``rlgf distill`` against a tiny model served on loopback: budget, cache, report, --then."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rlgf_cli.app import app
from rlgf_cli.evaluation.distill import GuideDataTask, score_and_keep, with_guide_data
from tasks.base import Example, Task
from tiny_assets import make_tiny_reward, served

pytestmark = pytest.mark.usefixtures("torch_one_thread")
runner = CliRunner()
MAX_NEW = 6


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path):
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("RLGF_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def reward_dir(tmp_path_factory):
    return make_tiny_reward(tmp_path_factory.mktemp("distill-reward") / "reward")


def distill_args(out, url, learner, reward, budget, *extra):
    return [
        "distill", "--guide", "openai:tiny", "--guide-base-url", url, "--learner", str(learner),
        "--reward-model", str(reward), "--out", str(out), "--prompts", "6", "--samples-per-prompt", "2",
        "--eval-limit", "3", "--max-new-tokens", str(MAX_NEW), "--episodes", "4", "--minibatch-size", "4",
        "--iterations", "2", "--lr", "1e-3", "--device", "cpu", "--guide-budget-tokens", str(budget), *extra,
    ]


def served_tokens(server):
    return server.counts["prompt_tokens"] + server.counts["completion_tokens"]


def test_distill_then_ppopp_report_and_cache_reuse(tmp_path, tiny_causal_dir, reward_dir):
    cfg = tmp_path / "then.toml"
    cfg.write_text("episodes = 4\nminibatch_size = 4\nepochs = 1\nrollout_batch_size = 4\n")
    out = tmp_path / "run"
    budget = 100_000
    extra = ["--then", "ppo++", "--then-iterations", "1", "--then-config", str(cfg), "--quiet"]
    with served(tiny_causal_dir) as server:
        first = runner.invoke(app, distill_args(out, server.url, tiny_causal_dir, reward_dir, budget, *extra))
        assert first.exit_code == 0, (first.output, first.exception)
        assert 0 < served_tokens(server) <= budget
        report = json.loads((out / "report.json").read_text())
        assert [r["name"] for r in report["rows"]] == ["guide", "learner", "learner + BC", "learner + BC + ppo++"]
        for r in report["rows"]:
            assert r["n"] == 3 and 0.0 <= r["metrics"]["sentiment"] <= 1.0
        assert "perplexity" not in report["rows"][0]["metrics"] and "perplexity" in report["rows"][1]["metrics"]
        c = report["collection"]
        assert (c["prompts"], c["completions"], c["kept"], c["budget_exhausted"]) == (6, 12, c["kept"], False)
        assert 0 < c["kept"] <= 12
        assert report["then"]["iterations"] == 1 and report["then"]["alg"] == "ppo++"
        assert (out / "bc" / "final" / "model.safetensors").is_file() and (out / "ppopp" / "final").is_dir()
        samples = [json.loads(line) for line in (out / "guide_samples.jsonl").read_text().splitlines()]
        assert len(samples) == 12 and {"prompt", "completion", "reward", "kept", "sample"} <= set(samples[0])
        md = (out / "report.md").read_text()
        assert "| guide | openai:tiny |" in md and "| learner + BC |" in md and "sentiment" in md
        requests, tokens = server.counts["completion_requests"], served_tokens(server)

        # the same command again: every guide completion (evaluation, collection, PPO++) is cached
        again = runner.invoke(app, distill_args(out, server.url, tiny_causal_dir, reward_dir, budget, *extra,
                                                "--overwrite"))
        assert again.exit_code == 0, (again.output, again.exception)
        assert server.counts["completion_requests"] == requests and served_tokens(server) == tokens
        rerun = json.loads((out / "report.json").read_text())
        assert rerun["guide_total"]["api_completions"] == 0 and rerun["guide_total"]["cache_hits"] > 0
        assert rerun["rows"][0]["metrics"] == report["rows"][0]["metrics"]


def test_budget_runs_out_during_collection(tmp_path, tiny_causal_dir, reward_dir):
    from tasks import get_task

    task = get_task("rotten-tomatoes", reward_model=str(reward_dir))
    size = lambda text: len(text.encode("utf-8"))  # noqa: E731 - the served tokenizer is byte-level
    evaluation = sum(size(ex.prompt) + MAX_NEW for ex in task.examples("test")[:3])
    per_prompt = [2 * (size(ex.prompt) + MAX_NEW) for ex in task.examples("train")[:6]]
    budget = evaluation + per_prompt[0] + per_prompt[1] + per_prompt[2] // 2
    out = tmp_path / "run"
    with served(tiny_causal_dir) as server:
        result = runner.invoke(app, distill_args(out, server.url, tiny_causal_dir, reward_dir, budget))
        assert result.exit_code == 0, (result.output, result.exception)
        assert served_tokens(server) <= budget  # the server's own count
    assert "going on with what was collected" in result.output
    report = json.loads((out / "report.json").read_text())
    c = report["collection"]
    assert c["budget_exhausted"] and 4 <= c["completions"] < 12 and c["completions"] % 2 == 0
    assert report["guide_total"]["total_tokens"] <= budget
    assert [r["name"] for r in report["rows"]] == ["guide", "learner", "learner + BC"]
    assert "ran out during collection" in (out / "report.md").read_text()


def test_a_then_config_keeps_its_seed_and_precision_unless_given(tmp_path):
    from rlgf_cli.evaluation.distill import DistillOptions, configs

    then_file = tmp_path / "then.toml"
    then_file.write_text('[train]\nseed = 3\nprecision = "fp32"\nepisodes = 4\n', encoding="utf-8")
    common = dict(guide="openai:tiny", learner="smollm2", task="rotten-tomatoes", out=str(tmp_path / "d"),
                  then="ppo++", then_config=str(then_file))
    _, then = configs(DistillOptions(**common))
    assert (then.seed, then.precision, then.episodes) == (3, "fp32", 4)
    _, then = configs(DistillOptions(**common, seed=5, precision="bf16"))  # given on the command line: they win
    assert (then.seed, then.precision) == (5, "bf16")


@pytest.mark.parametrize("text, message", [(None, "config file not found"), ("episodes = [", "is not valid TOML")])
def test_a_bad_then_config_names_the_option_given(tmp_path, text, message):
    then_file = tmp_path / "then.toml"
    if text is not None:
        then_file.write_text(text, encoding="utf-8")
    result = runner.invoke(app, ["distill", "--guide", "openai:tiny", "--then", "ppo", "--then-config", str(then_file),
                                 "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and message in result.output, result.output
    assert "--then-config" in result.output and " --config" not in result.output
    assert not (tmp_path / "o").exists()


def test_keep_top_and_the_bc_task():
    pairs = [(Example("a", ("a",)), t) for t in (" x", " yy", " ")] + [(Example("b", ("b",)), t) for t in (" p", " q", " r")]

    class Len:
        def reward(self, prompts, completions, examples):
            return [len(c) for c in completions]

    rows = score_and_keep(Len(), pairs, 3, keep_top=1)
    assert [r["kept"] for r in rows] == [False, True, False, True, False, False]  # ties keep the first
    rows = score_and_keep(Len(), pairs, 3, keep_top=None)
    assert [r["kept"] for r in rows] == [True, True, False, True, True, True]  # empty completions never

    class Base(Task):
        max_new_tokens = 7

        def bc_examples(self):
            return ["reference"]

    base = Base()
    wrapped = with_guide_data(base, [Example("a", ("a x",), target=" x")])
    assert isinstance(wrapped, Base) and isinstance(wrapped, GuideDataTask)
    assert wrapped.max_new_tokens == 7 and [e.target for e in wrapped.bc_examples()] == [" x"]
    assert base.bc_examples() == ["reference"], "the task itself keeps its own BC data"
    with pytest.raises(AttributeError):
        wrapped.no_such_attribute  # noqa: B018


@pytest.mark.parametrize("extra, message", [
    (["--samples-per-prompt", "0"], "--samples-per-prompt"),
    (["--keep-top", "5"], "--keep-top"),
    (["--then", "bc"], "--then bc"),
    (["--then", "nope"], "unknown algorithm"),
    (["--eval-split", "dev"], "unknown split"),
    (["--json", "."], "--json . is a folder"),
])
def test_bad_input(tmp_path, extra, message):
    result = runner.invoke(app, ["distill", "--guide", "openai:tiny", "--out", str(tmp_path / "o"), *extra])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("[error]") and message in lines[0]
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("args, message", [
    (["--guide", "openai:tiny"], "OPENAI_API_KEY is not set"),
    (["--guide", "nope:model"], "unknown backend"),
    (["--guide", "openai:tiny", "--learner", "hf:{empty}"], "config.json"),
])
def test_guide_and_learner_specs_fail_before_the_task_is_prepared(tmp_path, monkeypatch, args, message):
    """A missing API key, an unknown backend or an empty model folder: one [error] line before the
    reward is prepared (for the embedded default: a classifier trained the first time)."""
    import tasks.rotten_tomatoes as rt

    def refuse(self, *a, **k):
        raise AssertionError("the task was prepared before the specs were checked")

    for cls in (rt.SentimentContinuationTask, rt.RottenTomatoesTask):
        monkeypatch.setattr(cls, "prepare", refuse)
    (tmp_path / "empty").mkdir()
    args = [a.format(empty=tmp_path / "empty") for a in args]
    result = runner.invoke(app, ["distill", *args, "--out", str(tmp_path / "o")])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and lines[-1].startswith("[error]") and message in lines[-1], result.output
    assert not (tmp_path / "o").exists()


def test_budget_needs_an_api_guide(tmp_path, tiny_causal_dir):
    result = runner.invoke(app, ["distill", "--guide", str(tiny_causal_dir), "--guide-budget-tokens", "100",
                                 "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "API guide" in result.output


def test_local_guide(tmp_path, tiny_causal_dir, reward_dir):
    """A local model (no API, no budget) as the guide: same pipeline, no token accounting."""
    out = tmp_path / "run"
    result = runner.invoke(app, [
        "distill", "--guide", str(tiny_causal_dir), "--learner", str(tiny_causal_dir), "--reward-model", str(reward_dir),
        "--out", str(out), "--prompts", "3", "--samples-per-prompt", "2", "--keep-top", "1", "--eval-limit", "2",
        "--max-new-tokens", "4", "--episodes", "2", "--minibatch-size", "2", "--device", "cpu", "--json", "-",
    ])
    assert result.exit_code == 0, (result.output, result.exception)
    report = json.loads(result.stdout)
    assert report == json.loads((out / "report.json").read_text())
    again = runner.invoke(app, ["distill", "--guide", str(tiny_causal_dir), "--learner", str(tiny_causal_dir),
                                "--reward-model", str(reward_dir), "--out", str(out), "--overwrite", "--prompts", "3",
                                "--samples-per-prompt", "2", "--keep-top", "1", "--eval-limit", "2", "--max-new-tokens",
                                "4", "--episodes", "2", "--minibatch-size", "2", "--device", "cpu", "--quiet",
                                "--json", str(tmp_path / "report-copy.json")])
    assert again.exit_code == 0 and again.stdout == "", again.output
    assert json.loads((tmp_path / "report-copy.json").read_text())["rows"] == report["rows"]
    assert [r["name"] for r in report["rows"]] == ["guide", "learner", "learner + BC"]
    assert "perplexity" in report["rows"][0]["metrics"]  # a local guide can score text
    c = report["collection"]
    assert c["completions"] == 6 and c["kept"] <= 3 and c["guide"] is None and report["guide_total"] is None
    assert report["bc"]["iterations"] == max(1, c["kept"])  # ceil(2 epochs × kept / 2 per iteration)
    assert (out / "report.md").is_file()


def test_a_full_disk_is_refused_before_the_guide_is_paid(tmp_path, tiny_causal_dir, reward_dir, monkeypatch):
    from collections import namedtuple

    from rlgf_cli.training import checkpoint

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda path: usage(10**9, 10**9, 10**6))
    out = tmp_path / "run"
    with served(tiny_causal_dir) as server:
        result = runner.invoke(app, distill_args(out, server.url, tiny_causal_dir, reward_dir, 10**6, "--then", "ppo++"))
        assert served_tokens(server) == 0, "no guide call before the check"
    lines = [x for x in result.output.splitlines() if x.startswith("[error]")]
    assert result.exit_code == 1 and len(lines) == 1
    assert "not enough disk space for the experiment's checkpoints" in lines[0]
    assert not out.exists()


def test_a_folder_another_process_writes_is_refused(tmp_path, tiny_causal_dir, reward_dir):
    """One process at a time writes a distill --out (the lock rlgf train takes): a second one stops
    with one error naming the first, before the guide is paid, and leaves the folder as it was."""
    import subprocess
    import sys

    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from rlgf_cli.training.run_lock import RunLock; RunLock(Path(sys.argv[1])).acquire(); "
                               "print('held', flush=True); time.sleep(60)", str(out)],
                              cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        result = runner.invoke(app, ["distill", "--guide", str(tiny_causal_dir), "--learner", str(tiny_causal_dir),
                                     "--reward-model", str(reward_dir), "--out", str(out), "--overwrite",
                                     "--device", "cpu"])
        assert result.exit_code == 1, result.output
        assert f"is being written by another process (pid {holder.pid})" in result.output
        assert sorted(p.name for p in out.iterdir()) == [".rlgf-lock"]
    finally:
        holder.kill()
        holder.wait()


def test_a_task_without_a_reward_fails_before_the_guide_is_paid(tmp_path, tiny_causal_dir):
    """`--task prompts` brings no reward: refused before the guide is evaluated or asked for anything,
    with nothing left behind (it used to fail after collecting every completion, leaving an empty --out)."""
    data = tmp_path / "prompts.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": f"p{i}"}) for i in range(6)) + "\n")
    out = tmp_path / "o"
    result = runner.invoke(app, ["distill", "--task", "prompts", "--data", str(data), "--guide", str(tiny_causal_dir),
                                 "--learner", str(tiny_causal_dir), "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 1, result.output
    assert "has no reward of its own" in result.output and "evaluating guide" not in result.output
    assert not out.exists()


def test_then_options_without_then_are_said_to_be_ignored():
    from rlgf_cli.evaluation.distill import DistillOptions, check_options

    with pytest.warns(Warning, match="--then-config is ignored without --then"):
        check_options(DistillOptions(guide="g", then_config="x.toml"))


def test_a_new_folder_is_locked_before_the_guide_is_evaluated(tmp_path, tiny_causal_dir, reward_dir, monkeypatch):
    """Two distills into the same new --out used to both pay for the guide's evaluation before the
    second found the folder taken; the folder is now made and locked first. A failure that leaves
    it empty removes it again, so the same command can run once more."""
    from backends.errors import RlgfError
    from rlgf_cli.evaluation import evaluate as evaluate_module
    from rlgf_cli.training.run_lock import RunLock

    out = tmp_path / "new" / "run"
    seen = []

    def guide_evaluation(*args, **kwargs):
        try:
            RunLock(out).acquire()  # as a second distill would, from a file description of its own
        except RlgfError as exc:
            seen.append(exc.message)
        raise RlgfError("stopped by the test")

    monkeypatch.setattr(evaluate_module, "evaluate_policy", guide_evaluation)
    result = runner.invoke(app, ["distill", "--guide", str(tiny_causal_dir), "--learner", str(tiny_causal_dir),
                                 "--reward-model", str(reward_dir), "--out", str(out), "--prompts", "2",
                                 "--eval-limit", "2", "--max-new-tokens", "4", "--device", "cpu"])
    assert result.exit_code == 1 and "[error] stopped by the test" in result.output
    assert seen == [f"{out} is being trained by another process (pid {os.getpid()})"]  # RunLock(out)'s wording
    assert not out.exists() and (tmp_path / "new").is_dir()

"""``rlgf difficulty``: bucketing (terciles, thresholds, unseen concepts), the table, JSON and chart."""

from __future__ import annotations

import json
import struct

import pytest
from typer.testing import CliRunner

from backends.errors import RlgfError, RlgfWarning
from rlgf_cli.app import app
from rlgf_cli.evaluation.difficulty import (
    assign_buckets,
    bucket_by_count,
    bucket_by_score,
    gaps_for,
    parse_thresholds,
    run_difficulty,
    tercile_thresholds,
)
from tasks.base import Example, PromptDifficulty, Task
from tasks.commongen import unseen_counts
from tasks.registry import TASKS
from tiny_assets import make_tiny_checkpoint, make_tiny_reward

pytestmark = pytest.mark.usefixtures("torch_one_thread")
runner = CliRunner()


def test_terciles_on_known_scores():
    scores = [0.9, 0.1, 0.5, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6]
    low, high = tercile_thresholds(scores)
    assert (low, high) == pytest.approx((0.35, 0.65))
    buckets = bucket_by_score(scores, (low, high))
    assert {s for s, b in zip(scores, buckets) if b == "hard"} == {0.1, 0.2, 0.3}
    assert {s for s, b in zip(scores, buckets) if b == "medium"} == {0.4, 0.5, 0.6}
    assert {s for s, b in zip(scores, buckets) if b == "easy"} == {0.7, 0.8, 0.9}  # higher is easier


@pytest.mark.parametrize("n", [3, 4, 5, 10, 11, 100])
def test_terciles_partition_into_near_thirds(n):
    scores = [((i * 7919) % 1009) / 1009 for i in range(n)]  # distinct, shuffled
    buckets = bucket_by_score(scores, tercile_thresholds(scores))
    sizes = [buckets.count(b) for b in ("hard", "medium", "easy")]
    assert sum(sizes) == n and sizes == [round(n / 3), round(2 * n / 3) - round(n / 3), n - round(2 * n / 3)]


def test_ties_share_a_bucket_and_thresholds():
    scores = [0.2, 0.5, 0.5, 0.5, 0.9, 0.1]
    buckets = bucket_by_score(scores, tercile_thresholds(scores))
    assert len({b for s, b in zip(scores, buckets) if s == 0.5}) == 1
    assert bucket_by_score([0.1, 0.5, 0.9], (0.5,)) == ["hard", "easy", "easy"]
    assert bucket_by_score([0.1, 0.3, 0.7], (0.3, 0.7)) == ["hard", "medium", "easy"]
    assert parse_thresholds("0.3, 0.7") == (0.3, 0.7) and parse_thresholds("0.5") == (0.5,)
    for bad in ("0.7,0.3", "a,b", "0.1,0.2,0.3", "", "nan"):
        with pytest.raises(RlgfError):
            parse_thresholds(bad)
    with pytest.raises(RlgfError, match="at least 3"):
        tercile_thresholds([0.1, 0.2])


def test_unseen_concept_counting():
    train = [["dog", "frisbee", "catch"], ["Ski", "mountain"], ["dog", "run"]]
    evals = [["dog", "catch", "ski"], ["dog", "surf"], ["violin", "surf", "beach"], ["RUN", "mountain"]]
    counts = unseen_counts(evals, train)
    assert counts == [0, 1, 3, 0]
    assert bucket_by_count(counts, 1) == ["easy", "hard", "hard", "easy"]
    assert bucket_by_count(counts, 2) == ["easy", "easy", "hard", "easy"]


def test_commongen_task_buckets_by_unseen_concepts(tmp_path):
    commongen = pytest.importorskip("tasks.commongen")
    rows = [
        {"concepts": ["dog", "frisbee", "catch"], "targets": ["The dog catches a frisbee."], "split": "train"},
        {"concepts": ["ski", "mountain"], "targets": ["She skis down the mountain."], "split": "train"},
        {"concepts": ["dog", "ski"], "targets": ["A dog on skis."], "split": "validation"},
        {"concepts": ["violin", "dog"], "targets": ["A dog hears a violin."], "split": "validation"},
        {"concepts": ["violin", "surf"], "targets": ["He surfs with a violin."], "split": "validation"},
    ]
    path = tmp_path / "cg.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    task = commongen.CommonGenTask(data=str(path))
    examples = task.examples("val")
    buckets, counts, how = assign_buckets(task, examples)
    assert counts == [0.0, 1.0, 2.0] and buckets == ["easy", "hard", "hard"] and how["method"] == "unseen_concepts"
    buckets, _, _ = assign_buckets(task, examples, unseen_at_least=2)
    assert buckets == ["easy", "easy", "hard"]
    with pytest.raises(RlgfError, match="unseen"):
        assign_buckets(task, examples, thresholds=(0.5,))


def test_gaps():
    report = {"buckets": {
        "easy": {"n": 2, "policies": {"a": {"sentiment": 0.9}, "b": {"sentiment": 0.6}}},
        "hard": {"n": 2, "policies": {"a": {"sentiment": 0.4}, "b": {"sentiment": 0.5}}},
    }}
    assert gaps_for(report, "sentiment") == pytest.approx({"a": 0.5, "b": 0.1})


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_difficulty_command_end_to_end(tmp_path, tiny_causal_dir):
    reward = make_tiny_reward(tmp_path / "reward")
    ckpt = make_tiny_checkpoint(tmp_path / "run" / "final", tiny_causal_dir, seed=3)
    out, chart = tmp_path / "buckets.json", tmp_path / "fig" / "fig3.png"
    result = runner.invoke(app, [
        "difficulty", "-c", str(ckpt), "-p", str(tiny_causal_dir), "--reward-model", str(reward),
        "--limit", "9", "--max-new-tokens", "4", "--device", "cpu", "--json", str(out), "--plot", str(chart),
    ])
    assert result.exit_code == 0, (result.output, result.exception)
    data = json.loads(out.read_text())
    buckets = data["buckets"]
    assert list(buckets) == ["easy", "medium", "hard"]
    assert sum(b["n"] for b in buckets.values()) == 9
    # a partition: every prompt in exactly one bucket, sizes agree
    assigned = [p["bucket"] for p in data["prompts"]]
    assert len(assigned) == 9 and all(assigned.count(name) == b["n"] for name, b in buckets.items())
    # higher prompt score ⇒ easier bucket
    order = {"hard": 0, "medium": 1, "easy": 2}
    ranked = sorted(data["prompts"], key=lambda p: p["difficulty"])
    assert [order[p["bucket"]] for p in ranked] == sorted(order[p["bucket"]] for p in ranked)
    for b in buckets.values():
        assert set(b["policies"]) == {str(ckpt), str(tiny_causal_dir)}
        for metrics in b["policies"].values():
            assert 0.0 <= metrics["sentiment"] <= 1.0 and isinstance(metrics["perplexity"], float)
    assert data["method"] == "prompt_reward_terciles" and len(data["thresholds"]) == 2
    width, height = png_size(chart)
    assert 300 <= width <= 3000 and 200 <= height <= 3000
    from PIL import Image

    with Image.open(chart) as img:
        img.verify()
    assert "easy (n=3)" in result.stdout and "easy−hard" in result.output


def test_several_sampling_seeds_give_mean_and_std_per_bucket(tmp_path, tiny_causal_dir):
    reward = make_tiny_reward(tmp_path / "reward")
    out, chart = tmp_path / "buckets.json", tmp_path / "fig3.png"
    common = ["difficulty", "-p", str(tiny_causal_dir), "--reward-model", str(reward), "--limit", "6",
              "--max-new-tokens", "4", "--device", "cpu", "--reference", "none"]
    result = runner.invoke(app, [*common, "--decoding", "sample", "--seed", "5", "--seeds", "2",
                                 "--json", str(out), "--plot", str(chart)])
    assert result.exit_code == 0, (result.output, result.exception)
    data = json.loads(out.read_text())
    assert data["seeds"] == [5, 6]
    spec = str(tiny_causal_dir)
    for bucket in data["buckets"].values():
        runs = bucket["per_seed"][spec]
        assert [r["seed"] for r in runs] == [5, 6]
        values = [r["metrics"]["sentiment"] for r in runs]
        assert bucket["policies"][spec]["sentiment"] == pytest.approx(sum(values) / 2)
        assert bucket["policies_std"][spec]["sentiment"] == pytest.approx(abs(values[0] - values[1]) / 2 ** 0.5)
    # the two seeds sampled differently somewhere (else the std would say nothing)
    assert any(b["policies_std"][spec]["sentiment"] > 0 for b in data["buckets"].values())
    # seed 5 alone is the first of those runs
    single = tmp_path / "one.json"
    one = runner.invoke(app, [*common, "--decoding", "sample", "--seed", "5", "--json", str(single), "--quiet"])
    assert one.exit_code == 0, (one.output, one.exception)
    first = json.loads(single.read_text())
    assert "seeds" not in first and all("per_seed" not in b for b in first["buckets"].values())
    for name, bucket in first["buckets"].items():
        assert bucket["policies"][spec] == data["buckets"][name]["per_seed"][spec][0]["metrics"]
    assert "±" in result.stdout and "2 seeds (mean ± std)" in result.stdout
    png_size(chart)
    # deterministic decoding: one run stands for every seed
    greedy = runner.invoke(app, [*common, "--decoding", "greedy", "--seeds", "3", "--json", str(out)])
    assert greedy.exit_code == 0 and "one run stands for every seed" in greedy.output
    assert "seeds (mean ± std)" not in greedy.stdout  # one run: no mean ± std is claimed
    one = json.loads(out.read_text())
    assert "seeds" not in one and all("per_seed" not in b and "policies_std" not in b for b in one["buckets"].values())
    bad = runner.invoke(app, [*common, "--seeds", "0"])
    assert bad.exit_code == 1 and bad.output.strip().startswith("[error] --seeds must be >= 1")


def test_thresholds_option_and_errors(tmp_path, tiny_causal_dir):
    reward = make_tiny_reward(tmp_path / "reward")
    out = tmp_path / "b.json"
    result = runner.invoke(app, [
        "difficulty", "-p", str(tiny_causal_dir), "--reward-model", str(reward), "--limit", "5",
        "--max-new-tokens", "2", "--device", "cpu", "--thresholds", "0.5", "--json", str(out), "--quiet",
    ])
    assert result.exit_code == 0, (result.output, result.exception)
    data = json.loads(out.read_text())
    assert set(data["buckets"]) <= {"easy", "hard"} and data["thresholds"] == [0.5]
    assert sum(b["n"] for b in data["buckets"].values()) == 5
    result = runner.invoke(app, [  # a probability is never ≥ 2: every prompt is hard
        "difficulty", "-p", str(tiny_causal_dir), "--reward-model", str(reward), "--limit", "5",
        "--max-new-tokens", "2", "--device", "cpu", "--thresholds", "2", "--json", str(out), "--quiet",
    ])
    assert "warning: no prompt is easy at --thresholds 2 (5 hard; " in result.output, result.output
    assert result.exit_code == 0 and list(json.loads(out.read_text())["buckets"]) == ["hard"], (result.output, json.loads(out.read_text()))
    for args, message in (
        (["--thresholds", "0.9,0.1"], "must ascend"),
        (["--plot", str(tmp_path / "x.jpg")], ".png"),
        (["--unseen-at-least", "0"], "--unseen-at-least"),
        (["--split", "dev"], "unknown split"),
    ):
        bad = runner.invoke(app, ["difficulty", "-p", str(tiny_causal_dir), *args])
        lines = bad.output.strip().splitlines()
        assert bad.exit_code == 1 and len(lines) == 1 and lines[0].startswith("[error]") and message in lines[0]


def test_unknown_metric_is_refused_before_generation(tmp_path, tiny_causal_dir):
    reward = make_tiny_reward(tmp_path / "reward")
    bad = runner.invoke(app, [
        "difficulty", "-p", str(tiny_causal_dir), "--reward-model", str(reward), "--limit", "3",
        "--max-new-tokens", "2", "--device", "cpu", "--metric", "bleu4",
    ])
    lines = bad.output.strip().splitlines()
    assert bad.exit_code == 1 and lines[-1].startswith("[error] no metric 'bleu4' for rotten-tomatoes")
    assert "sentiment" in lines[-1] and not any(line.startswith("measuring") for line in lines)


class LengthTask(Task):
    """Test-only: a task that rates its own prompts (shorter is easier) and knows nothing of the study."""

    name = "toy-length"
    metric_names = ("completion_chars",)
    default_learner = "hf:unused"
    max_new_tokens = min_new_tokens = 3
    PROMPTS = ["a", "a b c d e f", "a b", "a b c d e f g h", "a b c", "a b c d e f g h i j k"]

    def examples(self, split):
        return [Example(p, (p,)) for p in self.PROMPTS]

    def prompt_difficulty(self, examples):
        return PromptDifficulty([-len(ex.prompt) for ex in examples], "score", "prompt_length", "shorter is easier")

    def metrics(self, prompts, completions, examples, policy=None, reference_policy=None):
        return {"completion_chars": sum(len(c) for c in completions) / len(completions)}


class ObstacleTask(LengthTask):
    name = "toy-obstacles"

    def prompt_difficulty(self, examples):
        return PromptDifficulty([ex.prompt.count(" ") for ex in examples], "count", "spaces", "hard: {n}+ spaces")


def test_a_task_of_its_own_is_bucketed_by_its_own_measure():
    task = LengthTask()
    examples = task.examples("test")
    buckets, values, how = assign_buckets(task, examples)
    assert values == [-len(p) for p in LengthTask.PROMPTS]
    assert buckets == ["easy", "medium", "easy", "hard", "medium", "hard"]
    assert how["method"] == "prompt_length_terciles" and how["description"] == "shorter is easier"
    buckets, _, how = assign_buckets(task, examples, thresholds=(-4.0,))
    assert buckets == ["easy", "hard", "easy", "hard", "hard", "hard"] and how["method"] == "thresholds"
    with pytest.raises(RlgfError, match="not by a count"):
        assign_buckets(task, examples, unseen_at_least=2)
    counting = ObstacleTask()
    buckets, values, how = assign_buckets(counting, examples, unseen_at_least=3)
    assert values == [0, 5, 1, 7, 2, 10] and buckets == ["easy", "hard", "easy", "hard", "easy", "hard"]
    assert how == {"method": "spaces", "unseen_at_least": 3, "description": "hard: 3+ spaces"}


def test_a_task_without_a_measure_is_refused():
    class Plain(LengthTask):
        name = "toy-plain"
        prompt_difficulty = Task.prompt_difficulty

    with pytest.raises(RlgfError, match="toy-plain has no measure of prompt difficulty"):
        assign_buckets(Plain(), Plain().examples("test"))
    with pytest.raises(ValueError, match="kind"):
        PromptDifficulty([1.0], "rank", "x", "y")


def test_the_study_runs_on_a_task_of_its_own(monkeypatch, tiny_causal_dir):
    monkeypatch.setitem(TASKS, "toy-length", f"{__name__}:LengthTask")  # registered like any task
    report = run_difficulty([str(tiny_causal_dir)], task_name="toy-length", split="test", limit=None, seed=0,
                            reference_spec=str(tiny_causal_dir), task_options={}, device="cpu", batch_size=8)
    assert report["task"] == "toy-length" and report["method"] == "prompt_length_terciles"
    assert [p["bucket"] for p in report["prompts"]] == ["easy", "medium", "easy", "hard", "medium", "hard"]
    assert {b: info["n"] for b, info in report["buckets"].items()} == {"easy": 2, "medium": 2, "hard": 2}
    for info in report["buckets"].values():
        assert set(info["policies"][str(tiny_causal_dir)]) == {"completion_chars"}


def test_cuts_that_leave_a_bucket_empty_say_so():
    """--thresholds outside the measured range (or tied terciles, or a count cut past every
    prompt) put every prompt in one bucket: one warning naming the range to cut in."""
    import warnings

    task, counting = LengthTask(), ObstacleTask()
    examples = task.examples("test")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assign_buckets(task, examples, thresholds=(0.0,))  # scores are minus lengths: all below 0, all hard
        assign_buckets(counting, examples, unseen_at_least=11)  # at most 10 spaces
        assign_buckets(task, examples, thresholds=(-12.0, -11.5))  # no score falls between the two
    texts = [str(w.message) for w in caught if issubclass(w.category, RlgfWarning)]
    assert texts[0] == ("no prompt is easy at --thresholds 0 (6 hard; scores from -21 to -1): "
                        "choose --thresholds between -21 and -1")
    assert texts[1] == ("no prompt is hard at --unseen-at-least 11 (6 easy; counts from 0 to 10): "
                        "choose --unseen-at-least from 1 to 10")
    assert texts[2] == ("no prompt is medium at --thresholds -12,-11.5 (4 easy, 2 hard; scores from -21 to -1): "
                        "no score falls between the cuts -12 and -11.5: widen them so some do") and len(texts) == 3
    class Flat(LengthTask):
        def prompt_difficulty(self, examples):
            return PromptDifficulty([2.0] * len(examples), "level", "stars", "more stars is harder")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert set(assign_buckets(Flat(), examples)[0]) == {"hard"}
    assert [str(w.message) for w in caught] == [
        "no prompt is easy or medium by terciles (6 hard; levels from 2 to 2): every prompt has the same level, "
        "so no cut separates them"]
    with warnings.catch_warnings(record=True) as caught:  # cuts inside the range: silent
        warnings.simplefilter("always")
        assign_buckets(task, examples)
        assign_buckets(task, examples, thresholds=(-4.0,))
        assign_buckets(counting, examples, unseen_at_least=3)
    assert not [w for w in caught if issubclass(w.category, RlgfWarning)]

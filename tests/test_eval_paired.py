"""``rlgf eval``'s paired comparison: each policy's per-prompt reward against the first's."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from rlgf_cli.app import app
from rlgf_cli.evaluation.paired import add_paired, compare, paired_lines, per_prompt_reward, verdict
from tiny_assets import make_tiny_checkpoint

pytestmark = pytest.mark.usefixtures("torch_one_thread")
runner = CliRunner()


def rows(rewards_by_seed: dict[int, list[float]]) -> list[dict]:
    return [{"index": i, "seed": s, "scores": {"reward": r}} for s, values in rewards_by_seed.items()
            for i, r in enumerate(values)]


def test_the_paired_difference_by_hand():
    stats = compare({0: 1.0, 1: 2.0, 2: 4.0}, {0: 0.0, 1: 1.0, 2: 1.0})  # differences 1, 1, 3
    sd = math.sqrt(((1 - 5 / 3) ** 2 * 2 + (3 - 5 / 3) ** 2) / 2)
    assert stats["n"] == 3 and stats["mean"] == pytest.approx(5 / 3) and stats["se"] == pytest.approx(sd / math.sqrt(3))
    # Student's t at 2 degrees of freedom (4.303), not the normal 1.96: three prompts are few
    assert stats["ci95"] == pytest.approx([5 / 3 - 4.303 * sd / math.sqrt(3), 5 / 3 + 4.303 * sd / math.sqrt(3)])
    assert (stats["higher"], stats["lower"], stats["equal"]) == (3, 0, 0)
    assert verdict(stats) == "no clear difference (95 % interval spans 0)"  # 1.667 − 4.303 × 0.667 < 0
    assert verdict(compare({i: 1.0 + 0.01 * i for i in range(20)}, {i: 0.0 for i in range(20)})).startswith("higher")
    spread = compare({0: 1.0, 1: 0.0, 2: 4.0}, {0: 0.0, 1: 1.0, 2: 1.0})  # 1, −1, 3: 1 ± 1.155
    assert (spread["higher"], spread["lower"]) == (2, 1) and spread["se"] == pytest.approx(2 / math.sqrt(3))
    assert verdict(spread) == "no clear difference (95 % interval spans 0)"
    assert verdict(compare({i: 0.0 for i in range(20)}, {i: 1.0 + 0.01 * i for i in range(20)})).startswith("lower")
    assert verdict(compare({0: 2.0, 1: 3.0}, {0: 2.0, 1: 3.0})) == "the same reward on every prompt"
    one = compare({0: 2.0}, {0: 1.0})
    assert one["se"] is None and one["ci95"] is None and verdict(one) == "one prompt: no error estimate"
    assert compare({0: 1.0}, {1: 1.0}) is None  # no prompt in common


def test_seeds_are_averaged_per_prompt_before_pairing():
    assert per_prompt_reward(rows({0: [1.0, 0.0], 1: [3.0, 1.0]})) == {0: 2.0, 1: 0.5}
    assert per_prompt_reward([{"index": 0, "scores": {"reward": 1.0}}, {"index": 1}]) is None  # a reward missing
    assert per_prompt_reward([{"index": 0, "scores": {"reward": float("nan")}}]) is None


def test_every_policy_after_the_first_is_paired_with_it():
    results = [{"policy": "a", "samples": rows({0: [0.0, 1.0, 2.0]})},
               {"policy": "b", "samples": rows({0: [1.0, 1.0, 3.0]})},
               {"policy": "c", "samples": rows({0: [0.0, 1.0, 2.0], 1: [0.0, 1.0, 2.0]})}]
    add_paired(results)
    assert "paired" not in results[0]
    assert results[1]["paired"]["against"] == "a" and results[1]["paired"]["mean"] == pytest.approx(2 / 3)
    assert results[2]["paired"]["mean"] == 0.0
    lines = paired_lines(results, str.upper)
    assert lines[0] == "paired on the same 3 prompts: reward minus A's, mean ± standard error over prompts"
    assert lines[1].startswith("  B  +0.6667 ± 0.3333  higher on 2, lower on 0 of 3: ")
    assert lines[2].endswith("C  +0.0000 ± 0.0000  higher on 0, lower on 0 of 3: the same reward on every prompt")
    unscored = [{"policy": "a", "samples": [{"index": 0}]}, {"policy": "b", "samples": rows({0: [1.0]})}]
    add_paired(unscored)
    assert "paired" not in unscored[1] and paired_lines(unscored, str) == []


def test_eval_prints_and_writes_the_comparison(tmp_path, tiny_causal_dir):
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"the film number {i} was"}) + "\n" for i in range(12)))
    module = tmp_path / "odd_reward.py"  # a reward that varies from one completion to the next
    module.write_text("def mod7(prompts, completions, references):\n"
                      "    return [float(sum(map(ord, c)) % 7) for c in completions]\n")
    a = make_tiny_checkpoint(tmp_path / "a" / "final", tiny_causal_dir, seed=1)
    b = make_tiny_checkpoint(tmp_path / "b" / "final", tiny_causal_dir, seed=2)
    report, md, samples = tmp_path / "eval.json", tmp_path / "eval.md", tmp_path / "s.jsonl"
    result = runner.invoke(app, [
        "eval", "-c", str(a), "-c", str(b), "--task", "prompts", "--data", str(data), "--reward", f"{module}:mod7",
        "--split", "train", "--seeds", "2", "--max-new-tokens", "8", "--device", "cpu", "--reference", "none",
        "--json", str(report), "--markdown", str(md), "--samples", str(samples),
    ])
    assert result.exit_code == 0, (result.output, result.exception)
    first, second = json.loads(report.read_text())["results"]
    paired = second["paired"]
    assert "paired" not in first and paired["against"] == str(a) and paired["n"] == first["n"] == 10
    # the mean paired difference is the difference of the reward columns (the same prompts, every seed)
    assert paired["mean"] == pytest.approx(second["metrics"]["reward"] - first["metrics"]["reward"])
    by_policy = {}
    for line in samples.read_text().splitlines():
        row = json.loads(line)
        by_policy.setdefault(row["policy"], []).append(row)
    assert paired == {"against": str(a), "metric": "reward",
                      **compare(per_prompt_reward(by_policy[str(b)]), per_prompt_reward(by_policy[str(a)]))}
    assert "paired on the same 10 prompts: reward minus a/final's" in result.output
    assert f"b/final  {paired['mean']:+.4f} ± {paired['se']:.4f}  higher on {paired['higher']}" in result.output
    assert "paired on the same 10 prompts" in md.read_text()
    alone = runner.invoke(app, [  # one policy: nothing to pair
        "eval", "-c", str(a), "--task", "prompts", "--data", str(data), "--reward", f"{module}:mod7",
        "--split", "train", "--max-new-tokens", "8", "--device", "cpu", "--reference", "none",
    ])
    assert alone.exit_code == 0 and "paired" not in alone.output


def test_difficulty_pairs_each_bucket(tmp_path, tiny_causal_dir):
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"the film number {i} was", "difficulty": i % 4}) + "\n"
                            for i in range(12)))
    module = tmp_path / "odd_reward.py"
    module.write_text("def mod7(prompts, completions, references):\n"
                      "    return [float(sum(map(ord, c)) % 7) for c in completions]\n")
    a = make_tiny_checkpoint(tmp_path / "a" / "final", tiny_causal_dir, seed=1)
    b = make_tiny_checkpoint(tmp_path / "b" / "final", tiny_causal_dir, seed=2)
    out = tmp_path / "buckets.json"
    result = runner.invoke(app, [
        "difficulty", "-c", str(a), "-c", str(b), "--task", "prompts", "--data", str(data), "--reward",
        f"{module}:mod7", "--split", "train", "--seeds", "2", "--max-new-tokens", "8", "--device", "cpu",
        "--reference", "none", "--json", str(out),
    ])
    assert result.exit_code == 0, (result.output, result.exception)
    buckets = json.loads(out.read_text())["buckets"]
    assert set(buckets) == {"easy", "medium", "hard"}
    for name, bucket in buckets.items():
        paired = bucket["paired"]
        assert paired["against"] == str(a) and list(paired["policies"]) == [str(b)]
        stats = paired["policies"][str(b)]
        assert stats["n"] == bucket["n"]  # the bucket's prompts only
        means = bucket["policies"]
        assert stats["mean"] == pytest.approx(means[str(b)]["reward"] - means[str(a)]["reward"])
        assert f"{name} (n={bucket['n']})" in result.output
    assert "paired by bucket: reward minus a/final's on the same prompts" in result.output


def test_the_baseline_is_the_first_policy_else_the_first_checkpoint_or_the_one_named():
    from backends.errors import RlgfError
    from rlgf_cli.evaluation.paired import choose_baseline

    specs = ["runs/a/final", "runs/b/final", "smollm2", "openai:guide"]
    checkpoints, policies = ["runs/a", "runs/b/final"], ["smollm2", "openai:guide"]
    assert choose_baseline(None, checkpoints, policies, specs) == "smollm2"  # what the checkpoints were trained from
    assert choose_baseline(None, checkpoints, [], specs[:2]) == "runs/a/final"
    assert choose_baseline("runs/a", checkpoints, policies, specs) == "runs/a/final"  # as given, or as resolved
    assert choose_baseline("openai:guide", checkpoints, policies, specs) == "openai:guide"
    with pytest.raises(RlgfError, match="--baseline 'smolm2' is not one of the policies") as err:
        choose_baseline("smolm2", checkpoints, policies, specs)
    assert "did you mean 'smollm2'?" in err.value.hint
    results = [{"policy": p, "samples": rows({0: [float(i), 1.0]})} for i, p in enumerate(specs)]
    add_paired(results, "smollm2")
    assert [r.get("paired", {}).get("mean") for r in results] == [-1.0, -0.5, None, 0.5]  # (i − 2 + 0) / 2
    assert {r["paired"]["against"] for r in results if "paired" in r} == {"smollm2"}


def test_eval_pairs_with_the_policy_beside_checkpoints_and_refuses_an_unknown_baseline(tmp_path, tiny_causal_dir):
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"the film number {i} was"}) + "\n" for i in range(12)))
    module = tmp_path / "odd_reward.py"
    module.write_text("def mod7(prompts, completions, references):\n"
                      "    return [float(sum(map(ord, c)) % 7) for c in completions]\n")
    a = make_tiny_checkpoint(tmp_path / "a" / "final", tiny_causal_dir, seed=1)
    common = ["--task", "prompts", "--data", str(data), "--reward", f"{module}:mod7", "--split", "train",
              "--max-new-tokens", "6", "--device", "cpu", "--reference", "none"]
    report = tmp_path / "eval.json"
    result = runner.invoke(app, ["eval", "-p", str(tiny_causal_dir), "-c", str(a), *common, "--json", str(report)])
    assert result.exit_code == 0, (result.output, result.exception)
    checkpoint, policy = json.loads(report.read_text())["results"]  # checkpoints are evaluated first
    assert checkpoint["policy"] == str(a) and checkpoint["paired"]["against"] == str(tiny_causal_dir)
    assert "paired" not in policy
    bad = runner.invoke(app, ["eval", "-p", str(tiny_causal_dir), "-c", str(a), *common, "--baseline", "nope"])
    assert bad.exit_code == 1 and bad.output.strip().startswith("[error] --baseline 'nope' is not one of")


@pytest.mark.parametrize("command", ["eval", "difficulty"])
def test_each_generation_is_scored_once(tmp_path, tiny_causal_dir, command):
    """The metrics, the rows and the pairing (and difficulty's buckets) share one scoring: a costly
    reward (a request per completion, a program) runs once per generation."""
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"the film number {i} was", "difficulty": i % 3}) + "\n"
                            for i in range(9)))
    log = tmp_path / "calls.txt"
    module = tmp_path / "counted.py"
    module.write_text("def reward(prompts, completions, references):\n"
                      f"    with open({str(log)!r}, 'a') as f:\n"
                      "        f.write(f'{len(completions)}\\n')\n"
                      "    return [float(len(c) % 5) for c in completions]\n")
    a = make_tiny_checkpoint(tmp_path / "a" / "final", tiny_causal_dir, seed=1)
    b = make_tiny_checkpoint(tmp_path / "b" / "final", tiny_causal_dir, seed=2)
    report = tmp_path / "out.json"
    result = runner.invoke(app, [
        command, "-c", str(a), "-c", str(b), "--task", "prompts", "--data", str(data), "--reward",
        f"{module}:reward", "--split", "train", "--seeds", "2", "--max-new-tokens", "6", "--device", "cpu",
        "--reference", "none", "--json", str(report),
    ])
    assert result.exit_code == 0, (result.output, result.exception)
    n = 9  # under 10 rows without a split column: all in train
    scored = [int(x) for x in log.read_text().split()]
    assert sum(scored) == 2 * 2 * n, scored  # 2 policies × 2 seeds, each generation once
    out = json.loads(report.read_text())
    if command == "eval":
        second = out["results"][1]
        assert second["paired"]["mean"] == pytest.approx(second["metrics"]["reward"] - out["results"][0]["metrics"]["reward"])
    else:
        assert all(bucket["paired"]["policies"] for bucket in out["buckets"].values())

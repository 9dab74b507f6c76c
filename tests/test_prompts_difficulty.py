"""``rlgf difficulty --task prompts``: buckets by the rows' own ``difficulty`` column (higher is
harder), else by the reward of the prompt alone; what cannot rank the prompts is one [error]."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from rlgf_cli.app import app
from rlgf_cli.evaluation.difficulty import assign_buckets, bucket_by_level
from tasks.prompts import PromptsTask

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("torch_one_thread")

REWARD = '''
def xs(prompts, completions, references):
    return [float((p + c).count("x")) for p, c in zip(prompts, completions)]

def flat(prompts, completions, references):
    return [0.5 for _ in completions]
'''


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def reward_file(tmp_path):
    (tmp_path / "my_reward.py").write_text(REWARD, encoding="utf-8")
    return tmp_path / "my_reward.py"


def difficulty(tmp_path, data, learner, *extra):
    out = tmp_path / "buckets.json"
    result = runner.invoke(app, ["difficulty", "--task", "prompts", "--data", str(data), "-p", str(learner),
                                 "--max-new-tokens", "3", "--device", "cpu", "--reference", "none",
                                 "--json", str(out), "--quiet", *extra])
    return result, (json.loads(out.read_text()) if out.is_file() else None)


def one_error(result) -> str:
    lines = [x for x in result.output.splitlines() if x.startswith("[error]")]
    assert result.exit_code == 1 and len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def test_levels_are_cut_with_the_harder_bucket_on_top():
    assert bucket_by_level([0, 1, 2, 3], [2]) == ["easy", "easy", "hard", "hard"]
    assert bucket_by_level([0, 1, 2, 3], [1, 3]) == ["easy", "medium", "medium", "hard"]


def test_a_difficulty_column_is_bucketed_in_terciles_and_at_thresholds(tmp_path, tiny_causal_dir, reward_file):
    rows = [{"prompt": f"Item {i}:", "difficulty": (i * 5) % 9, "split": "test"} for i in range(9)]
    data = write_rows(tmp_path / "p.jsonl", rows)
    result, report = difficulty(tmp_path, data, tiny_causal_dir, "--reward", f"{reward_file}:xs")
    assert result.exit_code == 0, result.output
    assert report["method"] == "difficulty_column_terciles" and report["thresholds"] == [2.5, 5.5]
    by_level = {p["difficulty"]: p["bucket"] for p in report["prompts"]}
    assert by_level == {0: "easy", 1: "easy", 2: "easy", 3: "medium", 4: "medium", 5: "medium",
                        6: "hard", 7: "hard", 8: "hard"}
    assert [report["buckets"][b]["n"] for b in ("easy", "medium", "hard")] == [3, 3, 3]
    assert "reward" in report["buckets"]["hard"]["policies"][str(tiny_causal_dir)]

    result, report = difficulty(tmp_path, data, tiny_causal_dir, "--thresholds", "6")  # no reward needed
    assert result.exit_code == 0, result.output
    assert report["method"] == "thresholds" and report["buckets"]["hard"]["n"] == 3
    assert report["buckets"]["easy"]["n"] == 6 and "medium" not in report["buckets"]


def test_without_a_column_the_reward_of_the_prompt_alone_ranks_them(tmp_path, tiny_causal_dir, reward_file):
    rows = [{"prompt": "x" * (i % 3) + f" item {i}:", "split": "test"} for i in range(9)]
    data = write_rows(tmp_path / "p.jsonl", rows)
    result, report = difficulty(tmp_path, data, tiny_causal_dir, "--reward", f"{reward_file}:xs")
    assert result.exit_code == 0, result.output
    assert report["method"] == "prompt_reward_terciles"
    # the reward saw an empty completion: each prompt's score is its own count of x
    for p in report["prompts"]:
        assert p["difficulty"] == p["prompt"].count("x")
        assert p["bucket"] == {0: "hard", 1: "medium", 2: "easy"}[p["prompt"].count("x")]


def test_what_cannot_rank_the_prompts_is_one_error(tmp_path, tiny_causal_dir, reward_file):
    plain = write_rows(tmp_path / "plain.jsonl", [{"prompt": f"Item {i}:", "split": "test"} for i in range(6)])
    assert "has neither" in one_error(difficulty(tmp_path, plain, tiny_causal_dir)[0])
    line = one_error(difficulty(tmp_path, plain, tiny_causal_dir, "--reward", f"{reward_file}:flat")[0])
    assert "0.5 for every prompt" in line
    partial = write_rows(tmp_path / "partial.jsonl",
                         [{"prompt": f"Item {i}:", "split": "test", **({"difficulty": i} if i else {})} for i in range(6)])
    assert "line 1: no 'difficulty'" in one_error(difficulty(tmp_path, partial, tiny_causal_dir)[0])
    assert not (tmp_path / "buckets.json").exists()


@pytest.mark.parametrize("value", ["interview", True, [1]])
def test_a_difficulty_that_is_not_a_number_is_refused_by_difficulty_alone(tmp_path, value):
    """A column of another meaning (APPS' "interview") does not stop training; `rlgf difficulty` says why
    it cannot use it."""
    data = write_rows(tmp_path / "p.jsonl", [{"prompt": "a", "difficulty": 1, "split": "test"},
                                             {"prompt": "b", "difficulty": value, "split": "test"}])
    task = PromptsTask(data=data)
    assert [ex.prompt for ex in task.examples("test")] == ["a", "b"]
    with pytest.raises(Exception, match="line 2: 'difficulty' is .*not a number"):
        task.prompt_difficulty(task.examples("test"))


def test_a_csv_difficulty_is_read_as_a_number_and_equal_levels_cannot_rank(tmp_path):
    data = tmp_path / "p.csv"
    data.write_text("prompt,difficulty,split\nfirst,2.5,test\nsecond,,test\nthird,7,test\n", encoding="utf-8")
    task = PromptsTask(data=data)
    with pytest.raises(Exception, match="line 3: no 'difficulty'"):
        assign_buckets(task, task.examples("test"))
    examples = [task.examples("test")[i] for i in (0, 2)]
    assert task.prompt_difficulty(examples).values == (2.5, 7.0)
    same = write_rows(tmp_path / "same.jsonl", [{"prompt": p, "difficulty": 3, "split": "test"} for p in "abc"])
    flat = PromptsTask(data=same)
    with pytest.raises(Exception, match="every prompt has 'difficulty' 3"):
        flat.prompt_difficulty(flat.examples("test"))

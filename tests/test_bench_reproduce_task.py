"""bench/reproduce.py on a task of one's own (``--task prompts --data FILE --reward SPEC``), and the
sparse- and partial-credit reward examples it was run on (bench/reverse_words.py,
tasks/examples/exact_match.py, word_match.py)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tasks" / "examples" / "reverse_words.jsonl"
REWARD = f"{ROOT / 'tasks' / 'examples' / 'exact_match.py'}:reward"


def _reproduce(out, learner, *extra):
    return subprocess.run(
        [sys.executable, str(ROOT / "bench" / "reproduce.py"), "--preset", "tiny", "--learner", str(learner),
         "--task", "prompts", "--data", str(DATA), "--reward", REWARD, "--max-new-tokens", "3", "--rows", "ppo++",
         "--seeds", "1", "--iterations", "1", "--episodes", "4", "--bc-iterations", "1", "--eval-limit", "4",
         "--device", "cpu", "--jobs", "1", "--out", str(out), *extra],
        capture_output=True, text=True, timeout=900,
    )


def test_a_reproduction_trains_and_scores_on_the_given_data_and_reward(tmp_path, tiny_causal_dir):
    out = tmp_path / "repro"
    proc = _reproduce(out, tiny_causal_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((out / "results.json").read_text())
    assert set(data["table"]) == {"initial learner", "BC (guide)", "ppo++"}
    assert all("reward" in row for row in data["table"].values())  # the prompts task's metric, not sentiment
    # every run trained on the file, with the reward and length asked for (the BC guide too)
    for run in (out / "guide", out / "seed0" / "ppo__"):
        config = (run / "config.toml").read_text()
        assert "reverse_words.jsonl" in config and "exact_match.py:reward" in config and "max_new_tokens = 3" in config
    # the evaluation scored with the exact-match reward: every prompt's reward is 0 or 1
    job = json.loads((out / "jobs" / "s0-ppo__.json").read_text())
    assert len(job["per_prompt"]) == 4 and set(job["per_prompt"]) <= {0.0, 1.0}
    settings = json.loads((out / "settings.json").read_text())
    assert settings["data"] == str(DATA) and settings["reward"] == REWARD and settings["max_new_tokens"] == 3
    # a resume with another reward is refused (its finished jobs were scored with the first)
    other = _reproduce(out, tiny_causal_dir, "--resume", "--reward", f"{ROOT / 'tasks' / 'examples' / 'upbeat.py'}:reward")
    assert other.returncode != 0 and "reward was" in other.stderr


def test_exact_match_reward():
    sys.path.insert(0, str(ROOT / "tasks" / "examples"))
    from exact_match import reward

    got = reward(["p"] * 5, [" lamp bird stone\nmore", "lamp bird stone ", " lamp bird", " stone", ""],
                 [" lamp bird stone", [" x", "lamp bird stone"], " lamp bird stone", ["stone"], [" a"]])
    assert got == [1.0, 1.0, 0.0, 1.0, 0.0]


def test_word_match_reward_gives_partial_credit_for_words_in_their_place():
    sys.path.insert(0, str(ROOT / "tasks" / "examples"))
    from word_match import reward

    ref = " tiger lemon dragon"
    got = reward(["p"] * 7, [" tiger lemon dragon\nmore", "tiger  lemon", "tiger lemon dragon lamp", " dragon lemon tiger",
                             "", "lemon dragon", " x"],
                 [ref, ref, ref, ref, ref, ref, [" a b", " x y"]])
    assert got == [1.0, 2 / 3, 3 / 4, 1 / 3, 0.0, 0.0, 0.5]  # the best of several references
    assert reward(["p"], [""], [[]]) == [0.0]  # no reference: nothing to match


def test_reverse_words_file_is_what_the_generator_writes(tmp_path):
    sys.path.insert(0, str(ROOT / "bench"))
    from reverse_words import main

    main(["--out", str(tmp_path / "rw.jsonl")])
    assert (tmp_path / "rw.jsonl").read_bytes() == DATA.read_bytes()
    rows = [json.loads(line) for line in DATA.read_text().splitlines()]
    assert [sum(r["split"] == s for r in rows) for s in ("train", "val", "test")] == [700, 100, 200]
    for row in rows[:50]:
        shown, asked = row["prompt"].split("\n")[1:]
        left, right = shown.split(" -> ")
        assert right.split() == left.split()[::-1] and len(left.split()) == 3
        assert row["reference"].split() == asked.removesuffix(" ->").split()[::-1]

"""bench/rollout.py runs every variant on a tiny config and prints the table and the goal line."""

import re

import pytest
from conftest import load_bench

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_rollout_bench_tiny(capsys):
    bench = load_bench("rollout")
    assert bench.main(["--layers", "1", "--width", "64", "--batch", "6", "--new-tokens", "5", "--repeats", "1",
                       "--betas", "1"]) == 0
    text = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| (")}
    assert set(rows) == {"(b) plain generation (learner)", "(b') plain generation, model.generate",
                         "(a) PPO++ lock-step roll-in + roll-out", "(a') PPO++ two-pass (roll-in, then prefill)",
                         "(c) roll-in + re-decode from scratch"}
    passes = {name: [int(x) for x in re.findall(r"\| (\d+) \+ (\d+) \|", line)[0]] for name, line in rows.items()}
    # the learner's passes: 5 (one prefill + 4 steps) in every one-loop variant, the lock-step one
    # included; two passes skip the steps before the shortest prefix. The guide runs only when guided.
    two_pass = "(a') PPO++ two-pass (roll-in, then prefill)"
    assert all(learner == 5 for name, (_, learner) in passes.items() if name != two_pass)
    assert 1 <= passes[two_pass][1] <= 5
    assert passes["(b) plain generation (learner)"][0] == 0
    assert passes["(a) PPO++ lock-step roll-in + roll-out"][0] > 0
    assert re.search(r"β = 1: \d+\.\d\d — (met|not met)", text)


def test_rollout_bench_t5(capsys):
    bench = load_bench("rollout")
    assert bench.main(["--arch", "t5", "--layers", "1", "--width", "64", "--batch", "4", "--new-tokens", "4",
                       "--repeats", "1", "--betas", "1"]) == 0
    text = capsys.readouterr().out
    assert "t5-config-1x64 (seq2seq" in text
    lockstep = next(line for line in text.splitlines() if line.startswith("| (a) PPO++ lock-step"))
    guide_passes, learner_passes = map(int, re.findall(r"\| (\d+) \+ (\d+) \|", lockstep)[0])
    assert learner_passes == 4 and guide_passes > 0  # the learner's decoder: a plain generation's steps

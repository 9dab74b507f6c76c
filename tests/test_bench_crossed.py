"""bench/reproduce_report.py's paired differences over seeds and prompts (:func:`crossed`)."""

from __future__ import annotations

import math
import random
import statistics
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from reproduce_report import crossed, ordering, rewards_match  # noqa: E402

from rlgf_cli.evaluation.paired import t95  # noqa: E402


def test_t_quantiles_are_close_to_the_tables():
    for df, exact in ((1, 12.706), (2, 4.303), (3, 3.182), (5, 2.571), (10, 2.228), (11, 2.201), (30, 2.042),
                      (120, 1.980)):
        assert t95(df) == pytest.approx(exact, abs=0.002)
    assert t95(2.5) == pytest.approx(3.575, abs=0.02) and t95(5.5) == pytest.approx(2.502, abs=0.005)  # exact values
    assert 6.02 <= t95(1.5) <= 6.2  # on the wide side of the exact 6.017
    assert t95(0.4) == t95(1) and t95(math.inf) == pytest.approx(1.96, abs=1e-3)


def rewards(diffs: list[list[float]]) -> list[dict[str, list[float]]]:
    """Seeds of rows ``a`` (all zero) and ``b`` (= the differences)."""
    return [{"a": [0.0] * len(d), "b": list(d)} for d in diffs]


def test_a_difference_that_only_the_prompts_move_is_the_prompts_standard_error():
    per_prompt = [0.1, -0.3, 0.4, 0.2, 0.0]
    c = crossed(rewards([per_prompt] * 3), "a", "b")
    assert c["mean"] == pytest.approx(statistics.fmean(per_prompt))
    assert c["se"] == pytest.approx(statistics.stdev(per_prompt) / math.sqrt(5))
    assert c["se_parts"]["seeds"] == pytest.approx(0, abs=1e-9) and c["se_parts"]["rest"] == pytest.approx(0, abs=1e-9)
    assert c["df"] == pytest.approx(4)


def test_a_difference_that_only_the_seeds_move_is_the_per_seed_standard_error():
    per_seed = [0.05, 0.01, 0.09, 0.03]
    c = crossed(rewards([[v] * 6 for v in per_seed]), "a", "b")
    assert c["se"] == pytest.approx(statistics.stdev(per_seed) / math.sqrt(4))
    assert c["df"] == pytest.approx(3) and c["ci95"][1] - c["mean"] == pytest.approx(t95(3) * c["se"])


def test_the_components_add_up_and_a_wide_sample_recovers_them():
    rng = random.Random(0)
    S, P = 40, 300  # seed effects sd 0.02, prompt effects sd 0.1, noise sd 0.05
    seed_fx = [rng.gauss(0, 0.02) for _ in range(S)]
    prompt_fx = [rng.gauss(0, 0.1) for _ in range(P)]
    diffs = [[0.03 + seed_fx[s] + prompt_fx[i] + rng.gauss(0, 0.05) for i in range(P)] for s in range(S)]
    c = crossed(rewards(diffs), "a", "b")
    parts = c["se_parts"]
    assert c["se"] ** 2 == pytest.approx(parts["seeds"] ** 2 + parts["prompts"] ** 2 + parts["rest"] ** 2)
    assert parts["seeds"] == pytest.approx(0.02 / math.sqrt(S), rel=0.35)
    assert parts["prompts"] == pytest.approx(0.1 / math.sqrt(P), rel=0.2)
    assert parts["rest"] == pytest.approx(0.05 / math.sqrt(S * P), rel=0.1)
    assert crossed(rewards(diffs[:1]), "a", "b") is None  # one seed: no seed component to estimate


def test_the_ordering_adds_it_only_where_the_metric_is_the_mean_reward():
    from reproduce_jobs import GUIDE, INITIAL

    by_label = [{INITIAL: [0.2, 0.4, 0.6], GUIDE: [0.5, 0.7, 0.6]}, {INITIAL: [0.3, 0.4, 0.5], GUIDE: [0.6, 0.6, 0.9]}]
    runs = [{k: {"sentiment": statistics.fmean(v)} for k, v in seed.items()} for seed in by_label]
    table = {INITIAL: {"sentiment": {"mean": 0.4}}, GUIDE: {"sentiment": {"mean": 0.65}}}
    assert rewards_match(runs, by_label, "sentiment")
    line = ordering(table, "sentiment", runs, by_label)[0]
    assert "over 2 seeds × 3 prompts ± " in line and "95 % interval" in line
    runs[0][GUIDE]["sentiment"] += 0.1  # a corpus-level metric is not the mean of the rewards
    assert not rewards_match(runs, by_label, "sentiment")
    assert "prompts ±" not in ordering(table, "sentiment", runs, by_label)[0]


def test_satterthwaite_degrees_of_freedom_by_hand():
    """Seeds, prompts and the rest all vary: df = (MS_s + MS_p − MS_r)² / Σ MS²/df, by hand."""
    diffs = [[0.1, 0.5, 0.2], [0.4, 0.6, 0.8], [0.0, 0.3, 0.9]]  # 3 seeds × 3 prompts
    S = P = 3
    g = sum(map(sum, diffs)) / 9
    rm = [sum(r) / 3 for r in diffs]
    cm = [sum(r[i] for r in diffs) / 3 for i in range(3)]
    ms_s = P * sum((m - g) ** 2 for m in rm) / (S - 1)
    ms_p = S * sum((m - g) ** 2 for m in cm) / (P - 1)
    ms_r = sum((diffs[s][i] - rm[s] - cm[i] + g) ** 2 for s in range(3) for i in range(3)) / 4
    assert ms_s > ms_r and ms_p > ms_r  # every component counts here
    df = (ms_s + ms_p - ms_r) ** 2 / (ms_s**2 / 2 + ms_p**2 / 2 + ms_r**2 / 4)
    c = crossed(rewards(diffs), "a", "b")
    assert c["se"] == pytest.approx(math.sqrt((ms_s + ms_p - ms_r) / 9))
    assert c["df"] == pytest.approx(df)
    assert c["ci95"][1] - c["mean"] == pytest.approx(t95(df) * c["se"])

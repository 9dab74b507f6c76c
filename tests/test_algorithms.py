"""The algorithms as data: which scheme (roll-in, roll-out, critic, β) runs in which iteration.

Pure tests of :mod:`rlgf_cli.algorithms` (no models); that the trainer really follows the plan
(the ``scheme`` of each iteration's metrics, LOLS's α mix) is in ``test_guided_training.py``.
"""

from __future__ import annotations

import math

import pytest

from rlgf_cli.algorithms import (
    AGGREVATED,
    GUIDE,
    LEARNER,
    PPO,
    PPO_PP,
    d2lols_switch,
    needs_guide,
    needs_guide_critic,
    plan,
)
from rlgf_cli.config import ALGORITHMS

RL_ALGS = [a for a in ALGORITHMS if a != "bc"]


def test_schemes_match_the_paper_table():
    # PPO: the learner does everything and its critic gives the advantages
    assert (PPO.mix_roll_in, PPO.roll_out, PPO.critic) == (LEARNER, LEARNER, LEARNER)
    assert not PPO.needs_guide
    # PPO++: the guide rolls in (prob. β), the learner rolls out, learner critic
    assert (PPO_PP.mix_roll_in, PPO_PP.roll_out, PPO_PP.critic) == (GUIDE, LEARNER, LEARNER)
    # AggreVaTeD: the learner rolls in (prob. β), the guide rolls out, guide critic
    assert (AGGREVATED.mix_roll_in, AGGREVATED.roll_out, AGGREVATED.critic) == (LEARNER, GUIDE, GUIDE)
    assert PPO_PP.needs_guide and AGGREVATED.needs_guide
    # paper Table 6 defaults
    assert PPO_PP.default_beta == pytest.approx(0.2)
    assert AGGREVATED.default_beta == pytest.approx(0.8)


def test_schemes_are_frozen_data():
    with pytest.raises(AttributeError):
        PPO_PP.roll_out = GUIDE  # type: ignore[misc]


@pytest.mark.parametrize("alg,scheme", [("ppo", PPO), ("ppo++", PPO_PP), ("aggrevated", AGGREVATED)])
def test_single_scheme_algorithms(alg, scheme):
    for it in range(4):
        (part,) = plan(alg, it, 4, alpha=0.8, beta=None)
        assert part.scheme is scheme
        assert part.beta == scheme.default_beta
        assert (part.weight, part.share) == (1.0, 1.0)
    (part,) = plan(alg, 0, 4, alpha=0.8, beta=0.5)
    assert part.beta == 0.5  # an explicit β overrides the paper default


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.8, 1.0])
def test_lols_collects_both_batches_every_iteration(alpha):
    for it in range(3):
        parts = plan("lols", it, 3, alpha=alpha, beta=None)
        assert [p.scheme for p in parts] == [PPO_PP, AGGREVATED]
        # α·A(learner-critic part) + (1−α)·A(guide-critic part), paper Alg. 4
        assert parts[0].weight == pytest.approx(alpha)
        assert parts[1].weight == pytest.approx(1.0 - alpha)
        assert sum(p.share for p in parts) == pytest.approx(1.0)
        assert [p.beta for p in parts] == [PPO_PP.default_beta, AGGREVATED.default_beta]


@pytest.mark.parametrize(
    "alpha,iterations,switch",
    [(0.8, 10, 8), (0.5, 10, 5), (0.25, 3, 1), (0.34, 3, 2), (0.1, 7, 1), (0.0, 5, 0), (1.0, 5, 5), (0.5, 1, 1),
     (0.3, 10, 3), (0.7, 10, 7)],
)
def test_d2lols_switches_after_ceil_alpha_t(alpha, iterations, switch):
    assert d2lols_switch(alpha, iterations) == switch == math.ceil(round(alpha * iterations, 9))
    schemes = [plan("d2lols", it, iterations, alpha=alpha, beta=None)[0].scheme for it in range(iterations)]
    assert schemes == [AGGREVATED] * switch + [PPO_PP] * (iterations - switch)
    # each phase keeps its own default β
    for it in range(iterations):
        (part,) = plan("d2lols", it, iterations, alpha=alpha, beta=None)
        assert part.beta == part.scheme.default_beta


def test_which_algorithms_need_a_guide_and_a_guide_critic():
    assert [a for a in RL_ALGS if needs_guide(a)] == ["ppo++", "aggrevated", "lols", "d2lols"]
    # only the algorithms that ever run AggreVaTeD need the guide's value function
    assert [a for a in RL_ALGS if needs_guide_critic(a)] == ["aggrevated", "lols", "d2lols"]
    for alg in RL_ALGS:
        iterations = 6
        schemes = {p.scheme for it in range(iterations) for p in plan(alg, it, iterations, alpha=0.5, beta=None)}
        assert needs_guide(alg) == any(s.needs_guide for s in schemes)
        assert needs_guide_critic(alg) == any(s.critic == GUIDE for s in schemes)


def test_unknown_algorithm():
    with pytest.raises(ValueError, match="bc"):
        plan("bc", 0, 1, alpha=0.5, beta=None)

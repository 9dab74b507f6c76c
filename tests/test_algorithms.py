"""The algorithms as data: one record per ``--alg`` (rollout plan, guide needs, defaults).

Pure tests of :mod:`rlgf_cli.training.algorithms` and of the defaults the config takes from it (no
models); that the trainer really follows the plan is in ``test_guided_training.py``, and a
test-only algorithm trained end to end is at the bottom of this file.
"""

from __future__ import annotations

import math

import pytest

from backends.errors import RlgfError
from rlgf_cli.training import algorithms
from rlgf_cli.training.algorithms import AGGREVATED, GUIDE, LEARNER, PPO, PPO_PP, Algorithm, Part, switch_iteration
from rlgf_cli.training.config import TrainConfig, build_config

RL_ALGS = [a for a in algorithms.names() if algorithms.get(a).trainer == "ppo"]


def plan(alg: str, iteration: int, iterations: int, **settings):
    cfg = TrainConfig(alg=alg, guide="g", iterations=iterations, **settings).validate()
    record = cfg.algorithm
    return record.plan(record.context(iteration, iterations, alpha=cfg.alpha, betas=cfg.betas(),
                                      switch=cfg.switch_iteration))


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


def test_records_are_frozen_data():
    with pytest.raises(AttributeError):
        PPO_PP.roll_out = GUIDE  # type: ignore[misc]
    with pytest.raises(AttributeError):
        algorithms.get("ppo").needs_guide = True  # type: ignore[misc]


def test_paper_defaults_live_in_the_records():
    """Tables 5 and 6: lr 1e-6 for RL, BC 1e-5; LOLS mixing probability α 0.8; D2LOLS mixing
    *time* α 0.2 (Table 2: 20 % is the best setting, 0.896, and 80 % the worst, 0.803)."""
    assert {a: algorithms.get(a).default_lr for a in RL_ALGS} == {a: 1e-6 for a in RL_ALGS}
    assert algorithms.get("bc").default_lr == 1e-5
    assert algorithms.get("lols").default_alpha == pytest.approx(0.8)
    assert algorithms.get("d2lols").default_alpha == pytest.approx(0.2)
    assert TrainConfig(alg="d2lols", guide="g", iterations=100).validate().switch_iteration == 20
    assert TrainConfig(alg="bc").learning_rate == 1e-5
    assert TrainConfig(alg="ppo").learning_rate == 1e-6


@pytest.mark.parametrize("alg,scheme", [("ppo", PPO), ("ppo++", PPO_PP), ("aggrevated", AGGREVATED)])
def test_single_scheme_algorithms(alg, scheme):
    for it in range(4):
        (part,) = plan(alg, it, 4)
        assert part.scheme is scheme
        assert part.beta == scheme.default_beta
        assert (part.weight, part.share) == (1.0, 1.0)
    if alg != "ppo":
        (part,) = plan(alg, 0, 4, beta=0.5)
        assert part.beta == 0.5  # an explicit β overrides the paper default


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.8, 1.0])
def test_lols_collects_both_batches_every_iteration(alpha):
    for it in range(3):
        parts = plan("lols", it, 3, alpha=alpha)
        assert [p.scheme for p in parts] == [PPO_PP, AGGREVATED]
        # α·L(A(learner-critic part)) + (1−α)·L(A(guide-critic part)), paper Alg. 4
        assert parts[0].weight == pytest.approx(alpha)
        assert parts[1].weight == pytest.approx(1.0 - alpha)
        assert sum(p.share for p in parts) == pytest.approx(1.0)
        assert [p.beta for p in parts] == [PPO_PP.default_beta, AGGREVATED.default_beta]
    assert plan("lols", 0, 3)[0].weight == pytest.approx(0.8)  # the default mixing probability


@pytest.mark.parametrize("alg", ["lols", "d2lols"])
def test_two_phases_have_their_own_beta(alg):
    parts = plan(alg, 0, 10, ppopp_beta=0.1, aggrevated_beta=0.6, alpha=0.5)
    parts += plan(alg, 9, 10, ppopp_beta=0.1, aggrevated_beta=0.6, alpha=0.5)
    betas = {p.scheme.name: p.beta for p in parts}
    assert betas == {"ppo++": 0.1, "aggrevated": 0.6}
    # one --beta would set the guide's roll-in probability of one phase and the learner's of the other
    with pytest.raises(RlgfError, match="--ppopp-beta") as err:
        TrainConfig(alg=alg, guide="g", beta=0.3).validate()
    assert "--aggrevated-beta" in err.value.hint


def test_phase_betas_also_set_the_one_phase_algorithms():
    (part,) = plan("ppo++", 0, 2, ppopp_beta=0.4)
    assert part.beta == 0.4
    (part,) = plan("aggrevated", 0, 2, aggrevated_beta=0.3)
    assert part.beta == 0.3


@pytest.mark.parametrize(
    "alpha,iterations,switch",
    [(0.8, 10, 8), (0.5, 10, 5), (0.25, 3, 1), (0.34, 3, 2), (0.1, 7, 1), (0.0, 5, 0), (1.0, 5, 5), (0.5, 1, 1),
     (0.3, 10, 3), (0.7, 10, 7), (0.2, 100, 20)],
)
def test_d2lols_switches_after_ceil_alpha_t(alpha, iterations, switch):
    assert switch_iteration(alpha, iterations) == switch == math.ceil(round(alpha * iterations, 9))
    schemes = [plan("d2lols", it, iterations, alpha=alpha)[0].scheme for it in range(iterations)]
    assert schemes == [AGGREVATED] * switch + [PPO_PP] * (iterations - switch)
    for it in range(iterations):  # each phase keeps its own default β
        (part,) = plan("d2lols", it, iterations, alpha=alpha)
        assert part.beta == part.scheme.default_beta


def test_d2lols_switch_is_fixed_when_the_run_starts(tmp_path):
    """The switch is stored in the run's config, so --resume --iterations N does not move it."""
    cfg = build_config(None, alg="d2lols", guide="g", iterations=10)
    assert cfg.switch_iteration == 2
    saved = tmp_path / "config.toml"
    saved.write_text(cfg.to_toml(), encoding="utf-8")
    longer = build_config(str(saved), iterations=40)
    assert (longer.iterations, longer.switch_iteration) == (40, 2)
    schemes = [plan("d2lols", it, 40, switch_iteration=2)[0].scheme.name for it in range(4)]
    assert schemes == ["aggrevated", "aggrevated", "ppo++", "ppo++"]


def test_which_algorithms_need_a_guide_and_a_guide_critic():
    assert [a for a in RL_ALGS if algorithms.get(a).needs_guide] == ["ppo++", "aggrevated", "lols", "d2lols"]
    # only the algorithms that ever run AggreVaTeD need the guide's value function
    assert [a for a in RL_ALGS if algorithms.get(a).needs_guide_critic] == ["aggrevated", "lols", "d2lols"]
    for alg in RL_ALGS:
        iterations = 6
        schemes = {p.scheme for it in range(iterations) for p in plan(alg, it, iterations, alpha=0.5)}
        record = algorithms.get(alg)
        assert record.needs_guide == any(s.needs_guide for s in schemes)
        assert record.needs_guide_critic == any(s.critic == GUIDE for s in schemes)


def test_names_aliases_and_suggestions():
    assert algorithms.get("PPOPP").name == "ppo++"
    assert algorithms.get("aggrevate").name == "aggrevated"
    with pytest.raises(RlgfError, match="unknown algorithm 'd2lol'") as err:
        algorithms.get("d2lol")
    assert "did you mean 'd2lols'" in err.value.hint
    assert algorithms.get("bc").plan is None and algorithms.get("bc").trainer == "bc"


# -- a new algorithm is one record ------------------------------------------------------------
@pytest.fixture
def toy_algorithm():
    """Guide rolls in every episode (β = 1) and the learner's tokens weigh half: registered
    here only, with no change to any other module."""
    toy = Algorithm("toy", "test-only: PPO++ with β = 1", lambda ctx: [Part(PPO_PP, 1.0, weight=0.5)],
                    aliases=("toy-alg",), needs_guide=True, default_lr=3e-3)
    algorithms.register(toy)
    yield toy
    algorithms.unregister("toy")


def test_a_registered_toy_algorithm_trains_one_iteration(toy_algorithm, tokenizer_and_models):
    from rlgf_cli.training.trainer import Trainer

    cfg = build_config(None, task="letters", alg="toy-alg", guide="tiny", iterations=1, episodes=8, epochs=1,
                       minibatch_size=8, rollout_batch_size=8, device="cpu")
    assert (cfg.alg, cfg.learning_rate) == ("toy", 3e-3)
    task, policy, reference, guide = tokenizer_and_models
    trainer = Trainer(cfg, task, policy, reference, policy.make_critic(), guide=guide)
    before = [p.detach().clone() for p in policy.model.parameters()]
    metrics = trainer.step()
    assert metrics["scheme"] == "ppo++"
    assert metrics["switched_episodes"] == 8  # β = 1: the guide rolled in every episode
    assert metrics["guide_tokens"] > 0 and math.isfinite(metrics["pg_loss"])
    assert any(not p.equal(b) for p, b in zip(policy.model.parameters(), before))


@pytest.fixture
def tokenizer_and_models():
    import copy

    from conftest import make_byte_tokenizer, make_tiny_causal
    from test_guided_rollout import always
    from test_guided_training import TASK

    from backends.hf.policy import HFPolicy
    from rlgf_cli.runtime import set_seed

    set_seed(0)
    tokenizer = make_byte_tokenizer()
    model, _ = make_tiny_causal(tokenizer, seed=0)
    policy = HFPolicy(model, tokenizer)
    reference = HFPolicy(copy.deepcopy(model), tokenizer)
    return TASK, policy, reference, always("e", seed=7, tokenizer=tokenizer, bias=6.0)

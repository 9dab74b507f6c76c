"""The trainer with guided rollouts: loss masks, critics, LOLS/D2LOLS, and short real runs.

* the policy-gradient loss sees learner tokens only (its gradient does not move when anything
  on guide tokens changes), the KL penalty is zero on guide tokens;
* each scheme takes its advantages (and critic targets) from its own critic, and each critic
  learns only on its own policy's tokens;
* LOLS collects both batches every iteration and mixes their policy losses α : 1 − α, each
  normalised over its own learner tokens;
  D2LOLS switches from AggreVaTeD to PPO++ after exactly ⌈α·T⌉ iterations;
* a guide with another tokenizer (T5/ByT5, or text only) trains end to end;
* every algorithm, run for a few seconds on a tiny model, improves a reward it can learn.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import string

import pytest
import torch
from conftest import make_byte_tokenizer, make_tiny_causal
from test_guided_rollout import TextGuide, always

from backends.base import Sampling
from backends.hf.policy import HFPolicy
from rlgf_cli.training.algorithms import AGGREVATED, GUIDE, LEARNER, PPO, PPO_PP, Part
from rlgf_cli.training.bc import BCTrainer
from rlgf_cli.runtime import set_seed
from rlgf_cli.training.config import TrainConfig
from rlgf_cli.training.ppo import gae, kl_penalised_rewards
from rlgf_cli.training.trainer import Buffers, Trainer
from tasks.base import Example, Task

pytestmark = pytest.mark.usefixtures("torch_one_thread")

L = 8
LOWER = set(string.ascii_lowercase)


class LettersTask(Task):
    """Reward: the fraction of completion characters that are lower-case ASCII letters.

    A random tiny byte-level model writes about 10 % letters; a guide biased toward ``e`` about
    70 %; BC imitates ``eeeeeeee``.
    """

    name = "letters"
    prompt_max_tokens = 16
    max_new_tokens = L
    min_new_tokens = L
    train_sampling = Sampling(do_sample=True)
    eval_sampling = Sampling(do_sample=True)

    def examples(self, split: str) -> list[Example]:
        return [Example(prompt=f"{i}:", references=(), target="e" * L) for i in range(32)]

    def bc_examples(self) -> list[Example]:
        return self.examples("train")

    def reward(self, prompts, completions, examples) -> list[float]:
        return [sum(c in LOWER for c in text) / max(len(text), 1) for text in completions]


TASK = LettersTask()


def learner_reward(policy: HFPolicy, n: int = 64) -> float:
    """The learner alone, sampled with a fixed seed: mean reward of its own completions."""
    state = torch.get_rng_state()
    torch.manual_seed(1234)
    prompts = [f"{i}:" for i in range(n)]
    query, qmask = policy.encode_prompts(prompts, TASK.prompt_max_tokens)
    with torch.no_grad():
        response, rmask = policy.generate(query, qmask, max_new_tokens=L, min_new_tokens=L, sampling=TASK.eval_sampling)
    torch.set_rng_state(state)
    return sum(TASK.reward(prompts, policy.decode(response, rmask), [])) / n


@pytest.fixture(scope="module")
def tokenizer():
    return make_byte_tokenizer()


def build(alg: str, tokenizer, *, guide="e", reference_seed: int | None = None, seed: int = 0,
          **overrides) -> Trainer:
    """A trainer on tiny models: learner = random Llama (seed 0), reference = its copy (or another
    random model), guide = a tiny model biased toward one letter (or the policy given)."""
    options = dict(task="letters", alg=alg, guide=None if alg == "ppo" else "tiny", iterations=4, episodes=16,
                   epochs=1, minibatch_size=16, rollout_batch_size=16, lr=1e-2, kl_coef=0.01, seed=seed,
                   device="cpu", alpha=0.5)
    options.update(overrides)
    if alg in ("lols", "d2lols") and "beta" in options:  # one β for both phases, in these tests
        beta = options.pop("beta")
        options.setdefault("ppopp_beta", beta)
        options.setdefault("aggrevated_beta", beta)
    cfg = TrainConfig(**options).validate()
    set_seed(seed)
    model, _ = make_tiny_causal(tokenizer, seed=0)
    policy = HFPolicy(model, tokenizer)
    if reference_seed is None:
        reference = HFPolicy(copy.deepcopy(model), tokenizer)
    else:
        reference = HFPolicy(make_tiny_causal(tokenizer, seed=reference_seed)[0], tokenizer)
    if isinstance(guide, str):
        guide = always(guide, seed=7, tokenizer=tokenizer, bias=6.0)
    needs_guide_critic = alg in ("aggrevated", "lols", "d2lols")
    return Trainer(cfg, TASK, policy, reference, policy.make_critic(), guide=None if alg == "ppo" else guide,
                   guide_critic=policy.make_critic() if needs_guide_critic else None)


def buffers(trainer: Trainer, part: Part, n: int = 16, part_id: int = 0) -> Buffers:
    batch = trainer.collect(TASK.examples("train")[:n], part)
    return trainer.compute_advantages(batch, trainer.score(batch), part, part_id=part_id)


def gradients(trainer: Trainer, buf: Buffers, modules) -> list[torch.Tensor | None]:
    """The gradients one minibatch step leaves on ``modules``' parameters (the step is skipped)."""
    step = trainer.optimizer.step
    trainer.optimizer.step = lambda *a, **k: None
    try:
        trainer.policy.model.train()
        trainer._minibatch_step(buf, torch.arange(len(buf.batch)))
    finally:
        trainer.optimizer.step = step
    return [None if p.grad is None else p.grad.clone() for m in modules for p in m.parameters()]


def same(a: list, b: list) -> bool:
    return all((x is None and y is None) or (x is not None and y is not None and torch.allclose(x, y, atol=1e-7))
               for x, y in zip(a, b))


def changed(buf: Buffers, name: str, where: torch.Tensor, value: float) -> Buffers:
    tensor = getattr(buf, name).clone()
    tensor[where.bool()] = value
    return dataclasses.replace(buf, **{name: tensor})


# -- loss masks -----------------------------------------------------------------------------
def test_policy_gradient_only_on_learner_tokens(tokenizer):
    trainer = build("ppo++", tokenizer, beta=1.0, reference_seed=3)
    part = Part(PPO_PP, 1.0)
    buf = buffers(trainer, part)
    guide, learner = buf.batch.guide_mask, buf.batch.learner_mask
    assert int(guide.sum()) > 0 and int(learner.sum()) > 0
    # advantages are zero-weighted on guide tokens (whitened over the learner's tokens)
    assert torch.all(buf.advantages[guide.bool()] == 0)
    assert buf.advantages[learner.bool()].abs().sum() > 0
    policy = [trainer.policy.model]
    base = gradients(trainer, buf, policy)
    assert any(g is not None and g.abs().sum() > 0 for g in base)
    # whatever the advantages / old log-probs say on guide tokens, the policy gradient is the same
    assert same(gradients(trainer, changed(buf, "advantages", guide, 50.0), policy), base)
    assert same(gradients(trainer, changed(buf, "old_logprobs", guide, -30.0), policy), base)
    # … while a change on learner tokens moves it
    assert not same(gradients(trainer, changed(buf, "advantages", learner, 50.0), policy), base)


def test_kl_penalty_is_zero_on_guide_tokens(tokenizer):
    # a reference that differs from the learner, so the KL term is non-zero where it applies
    trainer = build("ppo++", tokenizer, beta=1.0, reference_seed=3)
    buf = buffers(trainer, Part(PPO_PP, 1.0))
    guide, learner = buf.batch.guide_mask.bool(), buf.batch.learner_mask.bool()
    assert torch.all(buf.kl[guide] == 0)
    expected = (buf.old_logprobs - buf.ref_logprobs)[learner]
    assert torch.allclose(buf.kl[learner], expected)
    assert expected.abs().min() > 0
    # plain PPO: every generated token is the learner's and carries the penalty
    ppo = buffers(trainer, Part(PPO, 0.0))
    valid = ppo.batch.response_mask.bool()
    assert torch.allclose(ppo.kl[valid], (ppo.old_logprobs - ppo.ref_logprobs)[valid])


@pytest.mark.parametrize("scheme,critic_id", [(PPO_PP, 0), (AGGREVATED, 1)], ids=["ppo++", "aggrevated"])
def test_advantages_and_targets_come_from_the_schemes_critic(tokenizer, scheme, critic_id):
    trainer = build("lols", tokenizer, beta=0.5, reference_seed=3)
    with torch.no_grad():  # two critics that are easy to tell apart
        trainer.critics[LEARNER].value_head.bias.fill_(3.0)
        trainer.critics[GUIDE].value_head.bias.fill_(-3.0)
    part = Part(scheme, 0.5)
    buf = buffers(trainer, part)
    b = buf.batch
    assert buf.critic_id.tolist() == [critic_id] * len(b)
    own, other = (LEARNER, GUIDE) if scheme is PPO_PP else (GUIDE, LEARNER)
    mask = b.response_mask.float()
    with torch.no_grad():
        values = trainer.critics[own].values(b.query, b.query_mask, b.response, b.response_mask) * mask
        wrong = trainer.critics[other].values(b.query, b.query_mask, b.response, b.response_mask) * mask
    assert torch.allclose(buf.old_values, values, atol=1e-5)
    # critic targets: KL-penalised GAE returns bootstrapped from that critic's values
    rewards, _ = kl_penalised_rewards(buf.scores, buf.old_logprobs, buf.ref_logprobs, mask, trainer.kl_ctl.value,
                                      kl_mask=b.learner_mask)
    _, returns = gae(rewards, values, mask, trainer.cfg.gamma, trainer.cfg.lam)
    _, wrong_returns = gae(rewards, wrong, mask, trainer.cfg.gamma, trainer.cfg.lam)
    assert torch.allclose(buf.returns, returns, atol=1e-5)
    assert not torch.allclose(buf.returns, wrong_returns, atol=1e-2)


def test_each_critic_learns_on_its_own_policys_tokens(tokenizer):
    trainer = build("lols", tokenizer, beta=1.0, reference_seed=3)
    learner_critic, guide_critic = [trainer.critics[LEARNER]], [trainer.critics[GUIDE]]
    # PPO++ batch → the learner's critic, fitted on learner tokens only
    pp = buffers(trainer, Part(PPO_PP, 1.0))
    base = gradients(trainer, pp, learner_critic)
    assert any(g is not None and g.abs().sum() > 0 for g in base)
    assert same(gradients(trainer, changed(pp, "returns", pp.batch.guide_mask, 9.0), learner_critic), base)
    assert not same(gradients(trainer, changed(pp, "returns", pp.batch.learner_mask, 9.0), learner_critic), base)
    assert all(g is None for g in gradients(trainer, pp, guide_critic))
    # AggreVaTeD batch → the guide's critic, fitted on guide tokens only
    ag = buffers(trainer, Part(AGGREVATED, 1.0))
    base = gradients(trainer, ag, guide_critic)
    assert any(g is not None and g.abs().sum() > 0 for g in base)
    assert same(gradients(trainer, changed(ag, "returns", ag.batch.learner_mask, 9.0), guide_critic), base)
    assert not same(gradients(trainer, changed(ag, "returns", ag.batch.guide_mask, 9.0), guide_critic), base)
    assert all(g is None for g in gradients(trainer, ag, learner_critic))


def test_all_guide_batch_has_no_policy_loss(tokenizer):
    """AggreVaTeD with β = 0: the guide wrote everything, so nothing trains the learner's policy."""
    trainer = build("aggrevated", tokenizer, beta=0.0)
    buf = buffers(trainer, Part(AGGREVATED, 0.0))
    assert int(buf.batch.learner_mask.sum()) == 0
    assert torch.all(buf.kl == 0)
    assert all(g is None for g in gradients(trainer, buf, [trainer.policy.model]))
    stats = trainer._minibatch_step(buf, torch.arange(len(buf.batch)))
    assert "pg_loss" not in stats and "guide_v_loss" in stats


# -- LOLS and D2LOLS in the trainer ------------------------------------------------------------
def test_lols_mixes_both_batches_with_alpha(tokenizer):
    alpha = 0.3
    trainer = build("lols", tokenizer, alpha=alpha, iterations=2, episodes=16, minibatch_size=8)
    seen: list[tuple[Part, Buffers, Buffers]] = []
    updates: list[tuple[list, Buffers]] = []
    compute, update = trainer.compute_advantages, trainer.update

    def spy_compute(batch, scores, part=None, part_id=0):
        buf = compute(batch, scores, part, part_id=part_id)
        seen.append((part, buf, compute(batch, scores, dataclasses.replace(part, weight=1.0))))
        return buf

    def spy_update(buf):
        updates.append((list(trainer.part_weights), buf))
        return update(buf)

    trainer.compute_advantages, trainer.update = spy_compute, spy_update
    for it in range(2):
        metrics = trainer.step()
        assert metrics["scheme"] == "ppo++,aggrevated"
        parts = seen[2 * it: 2 * it + 2]
        assert [p.scheme for p, _, _ in parts] == [PPO_PP, AGGREVATED]
        assert [p.weight for p, _, _ in parts] == pytest.approx([alpha, 1 - alpha])
        for part, buf, unit in parts:  # the weight is applied to the loss, not baked into the advantages
            assert len(buf.batch) == 8
            assert torch.equal(buf.advantages, unit.advantages)
        weights, buf = updates[it]  # one update on both batches, each scored by its own critic
        assert weights == pytest.approx([alpha, 1 - alpha])
        assert buf.critic_id.tolist() == [0] * 8 + [1] * 8
        assert buf.part_id.tolist() == [0] * 8 + [1] * 8
        assert buf.batch.scheme == "ppo++,aggrevated"
        assert metrics["guide_calls"] > 0


def test_lols_gradient_shares_are_alpha_and_one_minus_alpha(tokenizer):
    """Each part's policy loss is normalised over its own learner tokens: the PPO++ part's
    gradient is exactly α × its gradient alone, the AggreVaTeD part's (1 − α) × its own,
    although the AggreVaTeD batch has far fewer learner tokens."""
    from rlgf_cli.training.tensors import concat

    alpha = 0.8
    trainer = build("lols", tokenizer, alpha=alpha, reference_seed=3, ppopp_beta=0.5, aggrevated_beta=0.5,
                    max_grad_norm=1e9)  # no clipping: the raw gradients are compared
    policy = [trainer.policy.model]
    pp = buffers(trainer, Part(PPO_PP, 0.5), part_id=0)
    ag = buffers(trainer, Part(AGGREVATED, 0.5), part_id=1)
    assert pp.batch.learner_mask.sum() > 1.5 * ag.batch.learner_mask.sum() > 0
    both = concat([pp, ag], trainer.pad_id)
    trainer.part_weights = [alpha, 1 - alpha]
    rows_pp = (both.part_id == 0).unsqueeze(1).expand_as(both.advantages)
    only_pp = gradients(trainer, changed(both, "advantages", ~rows_pp, 0.0), policy)
    only_ag = gradients(trainer, changed(both, "advantages", rows_pp, 0.0), policy)
    trainer.part_weights = [1.0]
    alone_pp = gradients(trainer, pp, policy)
    alone_ag = gradients(trainer, dataclasses.replace(ag, part_id=torch.zeros_like(ag.part_id)), policy)
    scale = lambda grads, w: [None if g is None else w * g for g in grads]  # noqa: E731
    assert same(only_pp, scale(alone_pp, alpha))
    assert same(only_ag, scale(alone_ag, 1 - alpha))
    norm = lambda grads: sum(float(g.norm() ** 2) for g in grads if g is not None) ** 0.5  # noqa: E731
    assert norm(only_pp) > 0 and norm(only_ag) > 0


def test_lols_with_one_episode(tokenizer):
    """One episode cannot be split in two: the PPO++ half is empty and the step still runs."""
    trainer = build("lols", tokenizer, episodes=1, minibatch_size=1)
    metrics = trainer.step()
    assert metrics["scheme"] == "aggrevated"
    assert math.isfinite(metrics["reward_mean"])
    empty = trainer.engine.collect([], PPO_PP, 1.0, torch.Generator(), 4)
    assert len(empty) == 0 and empty.stats["guide_calls"] == 0


def test_d2lols_switches_after_ceil_alpha_t_iterations(tokenizer):
    trainer = build("d2lols", tokenizer, alpha=0.4, iterations=5, episodes=8, minibatch_size=8)
    schemes = [trainer.step()["scheme"] for _ in range(5)]
    assert schemes == ["aggrevated"] * 2 + ["ppo++"] * 3  # ⌈0.4 · 5⌉ = 2


# -- a guide with another tokenizer, end to end --------------------------------------------------
@pytest.mark.parametrize("kind", ["t5-byt5", "text-only"])
def test_guide_with_another_tokenizer_trains(tokenizer, kind):
    if kind == "t5-byt5":
        guide = always("e", seed=1, seq2seq=True, bias=6.0)
    else:
        guide = TextGuide()
    trainer = build("lols", tokenizer, guide=guide, beta=1.0, iterations=2, episodes=16, minibatch_size=8)
    assert not trainer.engine.token_guide
    before = [p.detach().clone() for p in trainer.policy.model.parameters()]
    for _ in range(2):
        metrics = trainer.step()
        assert metrics["guide_tokens"] > 0 and metrics["learner_tokens"] > 0
        # counted in learner tokens; the ByT5 guide's text can re-tokenize to fewer of them (bytes
        # that are no UTF-8 are dropped when it decodes), the é-writing text guide's to more
        assert 0 < metrics["response_length"] <= L
        if kind == "text-only":
            assert metrics["response_length"] == L
        for key in ("pg_loss", "v_loss", "guide_v_loss", "kl", "reward_mean"):
            assert math.isfinite(metrics[key]), key
    assert trainer.engine.guide_calls > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.policy.model.parameters()))
    if kind == "text-only":  # asked for roll-ins (PPO++) and roll-outs (AggreVaTeD), in learner tokens
        assert guide.calls and all(0 < n <= L for _, n in guide.calls)


# -- every algorithm learns --------------------------------------------------------------------
@pytest.mark.parametrize("alg", ["ppo", "ppo++", "aggrevated", "lols", "d2lols", "bc"])
def test_short_run_improves_the_reward(tokenizer, alg):
    """Ten iterations at a large learning rate: the learner alone (sampled, fixed seed) writes
    clearly more letters than before. The guide writes ~70 % letters; the learner starts at ~10 %."""
    iterations = 10
    kwargs = dict(iterations=iterations, episodes=32, epochs=4, minibatch_size=16)
    if alg == "bc":
        cfg = TrainConfig(task="letters", alg="bc", lr=1e-2, seed=0, device="cpu", **kwargs).validate()
        set_seed(0)
        policy = HFPolicy(make_tiny_causal(tokenizer, seed=0)[0], tokenizer)
        trainer = BCTrainer(cfg, TASK, policy)
    else:
        trainer = build(alg, tokenizer, **kwargs)
        policy = trainer.policy
    before = learner_reward(policy)
    metrics = [trainer.step() for _ in range(iterations)]
    after = learner_reward(policy)
    assert before < 0.2
    # at least twice the letters (AggreVaTeD, whose learner only writes the roll-ins, is the slowest)
    assert after > max(2 * before, before + 0.1), (before, after)
    if alg == "bc":
        assert metrics[-1]["bc_loss"] < metrics[0]["bc_loss"] / 2
        return
    schemes = [m["scheme"] for m in metrics]
    expected = {"ppo": ["ppo"] * 10, "ppo++": ["ppo++"] * 10, "aggrevated": ["aggrevated"] * 10,
                "lols": ["ppo++,aggrevated"] * 10, "d2lols": ["aggrevated"] * 5 + ["ppo++"] * 5}[alg]
    assert schemes == expected
    if alg != "ppo":
        assert sum(m["guide_tokens"] for m in metrics) > 0
    if alg in ("ppo", "ppo++"):  # the learner writes most tokens: the episodes' reward rises too
        first = sum(m["reward_mean"] for m in metrics[:2]) / 2
        last = sum(m["reward_mean"] for m in metrics[-2:]) / 2
        assert last > first + 0.1, (first, last)

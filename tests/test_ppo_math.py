"""PPO math on small hand-computed tensors."""

import math

import pytest
import torch

from rlgf_cli.training.ppo import (
    AdaptiveKLController,
    exact_kl,
    one_step_before_restart,
    clipped_policy_loss,
    clipped_value_loss,
    gae,
    kl_penalised_rewards,
    masked_mean,
    masked_whiten,
)


def test_masked_mean_ignores_padding():
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, 100.0, 100.0]])
    m = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert masked_mean(x, m).item() == pytest.approx(2.0)
    assert masked_mean(x, m, dim=1).tolist() == pytest.approx([1.5, 3.0])


def test_masked_whiten_zero_mean_unit_variance_on_valid_tokens():
    x = torch.tensor([[1.0, 3.0, 50.0], [5.0, 7.0, 50.0]])
    m = torch.tensor([[1, 1, 0], [1, 1, 0]])
    w = masked_whiten(x, m)
    vals = torch.tensor([1.0, 3.0, 5.0, 7.0])
    expected = (vals - 4.0) / vals.std()
    assert w[:, :2].flatten().tolist() == pytest.approx(expected.tolist(), rel=1e-5)
    assert w[:, 2].tolist() == [0.0, 0.0]


def test_kl_penalty_and_score_on_last_token():
    scores = torch.tensor([1.0, 0.5])
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, 0.0]])
    ref = torch.tensor([[-1.5, -2.0, -2.0], [-0.5, -3.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    rewards, kl = kl_penalised_rewards(scores, logp, ref, mask, kl_coef=0.1)
    # kl = logp - ref: row0 [0.5, 0, -1], row1 [-0.5, 2, (pad)]
    assert kl.flatten().tolist() == pytest.approx([0.5, 0.0, -1.0, -0.5, 2.0, 0.0])
    assert rewards.flatten().tolist() == pytest.approx([-0.05, 0.0, 0.1 + 1.0, 0.05, -0.2 + 0.5, 0.0])


def test_gae_matches_hand_computation():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.6, 0.7]])
    mask = torch.ones(1, 3)
    gamma, lam = 0.9, 0.8
    adv, ret = gae(rewards, values, mask, gamma, lam)
    d2 = 1.0 + gamma * 0.0 - 0.7
    d1 = 0.0 + gamma * 0.7 - 0.6
    d0 = 0.0 + gamma * 0.6 - 0.5
    a2 = d2
    a1 = d1 + gamma * lam * a2
    a0 = d0 + gamma * lam * a1
    assert adv[0].tolist() == pytest.approx([a0, a1, a2])
    assert ret[0].tolist() == pytest.approx([a0 + 0.5, a1 + 0.6, a2 + 0.7])


def test_gae_stops_at_episode_end_and_ignores_padding_values():
    rewards = torch.tensor([[0.0, 2.0, 0.0]])
    values = torch.tensor([[1.0, 1.0, 99.0]])  # the padded value must not bootstrap
    mask = torch.tensor([[1, 1, 0]])
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    # a1 = 2 - 1 = 1; a0 = 0 + 1 - 1 + a1 = 1
    assert adv[0].tolist() == pytest.approx([1.0, 1.0, 0.0])
    assert ret[0].tolist() == pytest.approx([2.0, 2.0, 0.0])


def test_clipped_policy_loss_hand_computed():
    old = torch.zeros(1, 3)
    # ratios e^0.5≈1.6487 (clipped to 1.2), e^-0.5≈0.6065 (clipped to 0.8), 1.0
    new = torch.tensor([[0.5, -0.5, 0.0]])
    adv = torch.tensor([[1.0, 1.0, -2.0]])
    mask = torch.ones(1, 3)
    out = clipped_policy_loss(new, old, adv, mask, clip_range=0.2)
    r0, r1 = math.exp(0.5), math.exp(-0.5)
    # token0: max(-1*1.6487, -1*1.2) = -1.2 ; token1: max(-0.6065, -0.8) = -0.6065 ; token2: 2
    expected = (-1.2 + -r1 + 2.0) / 3
    assert out.pg_loss.item() == pytest.approx(expected, rel=1e-6)
    assert out.clipfrac.item() == pytest.approx(2 / 3)
    approx = ((r0 - 1 - 0.5) + (r1 - 1 + 0.5) + 0.0) / 3
    assert out.approx_kl.item() == pytest.approx(approx, rel=1e-6)


def test_clipped_policy_loss_gradient_only_through_unclipped_terms():
    old = torch.zeros(1, 2)
    new = torch.tensor([[0.5, 0.0]], requires_grad=True)
    adv = torch.tensor([[1.0, 1.0]])
    out = clipped_policy_loss(new, old, adv, torch.ones(1, 2), clip_range=0.2)
    out.pg_loss.backward()
    # token0 is clipped (ratio 1.65 > 1.2 with A>0): no gradient; token1: d(-r)/dlogp = -1/2
    assert new.grad.flatten().tolist() == pytest.approx([0.0, -0.5])


def test_clipped_value_loss_hand_computed():
    old = torch.tensor([[1.0, 1.0]])
    new = torch.tensor([[2.0, 1.1]])
    ret = torch.tensor([[3.0, 0.0]])
    mask = torch.ones(1, 2)
    loss = clipped_value_loss(new, old, ret, mask, clip_range_value=0.2)
    # token0: unclipped (2-3)^2=1, clipped v=1.2 -> (1.2-3)^2=3.24 -> 3.24
    # token1: unclipped 1.21, clipped 1.1 (within range) -> 1.21
    assert loss.item() == pytest.approx(0.5 * (3.24 + 1.21) / 2)


def test_adaptive_kl_controller_follows_rl4lms_rule():
    """coef ← coef·(1 + 0.1·clip(KL/target − 1, −0.2, 0.2)), KL and target per learner token."""
    ctl = AdaptiveKLController(0.1, target=0.1)
    # KL twice the target: error clipped to +0.2, so +2 % in one iteration
    assert ctl.update(0.2) == pytest.approx(0.1 * 1.02)
    before = ctl.value
    # KL at 0.105: error 0.05 → +0.5 %
    assert ctl.update(0.105) == pytest.approx(before * 1.005)
    before = ctl.value
    # KL zero: error clipped to -0.2, the coefficient shrinks 2 %
    assert ctl.update(0.0) == pytest.approx(before * 0.98)
    # ten iterations at twice the target move it by 1.02^10 ≈ 22 %, not the 0.13 % of a 10,000 horizon
    ten = AdaptiveKLController(0.1, target=0.1)
    for _ in range(10):
        ten.update(0.5)
    assert ten.value == pytest.approx(0.1 * 1.02 ** 10)
    fixed = AdaptiveKLController(0.3, target=None)
    assert fixed.update(5.0) == 0.3
    state = ctl.state_dict()
    other = AdaptiveKLController(1.0, 1.0)
    other.load_state_dict(state)
    assert other.value == ctl.value and other.target == 0.1


def test_exact_kl_hand_computed_and_never_negative():
    # π = (0.5, 0.5), π_ref = (0.25, 0.75): KL = 0.5·ln 2 + 0.5·ln(2/3)
    logits = torch.log(torch.tensor([[[0.5, 0.5]]]))
    ref = torch.log(torch.tensor([[[0.25, 0.75]]]))
    assert exact_kl(logits, ref).item() == pytest.approx(0.5 * math.log(2) + 0.5 * math.log(2 / 3))
    # the sampled estimate log π(a) − log π_ref(a) of token 1 is negative; the exact KL is not
    assert (logits[0, 0, 1] - ref[0, 0, 1]).item() < 0
    torch.manual_seed(0)
    a, b = torch.randn(3, 5, 11), torch.randn(3, 5, 11)
    assert (exact_kl(a, b) >= 0).all() and exact_kl(a, a).abs().max() < 1e-6


def test_aggrevated_one_step_advantage_hand_computed():
    """A row whose learner rolled in k = 3 tokens and the guide rolled out 2: tokens 0 and 1
    get r_t + γV(s_{t+1}) − V(s_t); token 2 (the deviation) the λ-return through the roll-out."""
    gamma, lam = 0.9, 0.5
    rewards = torch.tensor([[-0.1, -0.2, -0.3, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.4, 0.6, 0.7, 0.8]])
    mask = torch.ones(1, 5)
    adv, _ = gae(rewards, values, mask, gamma, lam)
    out = one_step_before_restart(adv, rewards, values, mask, torch.tensor([3]), gamma)
    # deltas: t4 = 1 − 0.8 = 0.2; t3 = 0 + 0.72 − 0.7 = 0.02; t2 = −0.3 + 0.63 − 0.6 = −0.27
    #         t1 = −0.2 + 0.54 − 0.4 = −0.06; t0 = −0.1 + 0.36 − 0.5 = −0.24
    # GAE at t2 = −0.27 + 0.45·(0.02 + 0.45·0.2) = −0.2205
    assert out[0].tolist() == pytest.approx([-0.24, -0.06, -0.2205, 0.02 + 0.45 * 0.2, 0.2])
    # whole-sequence GAE credits token 0 with the later deviation too (what the authors' code does)
    assert adv[0, 0].item() == pytest.approx(-0.24 + 0.45 * (-0.06 + 0.45 * adv[0, 2].item()))
    # no roll-in (k = 0) or a one-token roll-in: nothing changes
    for k in (0, 1):
        assert torch.equal(one_step_before_restart(adv, rewards, values, mask, torch.tensor([k]), gamma), adv)

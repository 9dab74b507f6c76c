"""The PPO core: token-level rewards with a KL penalty, GAE, and the clipped losses.

Everything here is a pure function on tensors (or a tiny controller object), so each
term can be checked on hand-computed inputs. Shapes: ``[B, T]`` for per-token tensors,
with ``mask`` marking the valid response tokens (1) and padding (0).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over positions where ``mask`` is 1 (0 where there is nothing to average)."""
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1.0)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1.0)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Normalise ``x`` to unit variance (and zero mean) over the masked positions."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    n = mask.sum()
    if n > 1:  # unbiased, like torch.var
        var = var * n / (n - 1)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return out * mask.to(x.dtype)


def kl_penalised_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
    kl_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards: ``-kl_coef * (log π - log π_ref)`` at every learner token, plus
    the episode's score on its last valid token (paper appendix C.1).

    ``kl_mask`` (default: ``mask``) limits the penalty to the tokens the learner generated;
    guide tokens carry no KL term. Returns ``(rewards, kl)`` with ``kl`` the masked log-ratio.
    """
    mask = mask.to(logprobs.dtype)
    kl_mask = mask if kl_mask is None else kl_mask.to(logprobs.dtype) * mask
    kl = (logprobs - ref_logprobs) * kl_mask
    rewards = -kl_coef * kl
    lengths = mask.sum(1).long()
    has_tokens = lengths > 0
    last = (lengths - 1).clamp(min=0)
    rows = torch.arange(scores.shape[0], device=scores.device)
    bonus = torch.zeros_like(rewards)
    bonus[rows[has_tokens], last[has_tokens]] = scores[has_tokens].to(rewards.dtype)
    return (rewards + bonus) * mask, kl


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over right-padded episodes.

    The value after an episode's last valid token is 0 (the episode ends there).
    Returns ``(advantages, returns)``, both zero on padding; ``returns = A + V``.
    """
    mask = mask.to(values.dtype)
    values = values * mask
    T = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(T)):
        next_value = values[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = (delta + gamma * lam * last) * mask[:, t]
        advantages[:, t] = last
    returns = (advantages + values) * mask
    return advantages, returns


@dataclass
class PolicyLoss:
    pg_loss: torch.Tensor
    approx_kl: torch.Tensor
    clipfrac: torch.Tensor


def clipped_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
) -> PolicyLoss:
    """PPO's clipped surrogate: ``mean(max(-A·r, -A·clip(r, 1-ε, 1+ε)))`` over ``mask``."""
    logratio = logprobs - old_logprobs
    ratio = torch.exp(logratio)
    pg_loss_unclipped = -advantages * ratio
    pg_loss_clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    pg_loss = masked_mean(torch.max(pg_loss_unclipped, pg_loss_clipped), mask)
    with torch.no_grad():
        approx_kl = masked_mean((ratio - 1.0) - logratio, mask)
        clipfrac = masked_mean((torch.abs(ratio - 1.0) > clip_range).float(), mask)
    return PolicyLoss(pg_loss, approx_kl, clipfrac)


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range_value: float,
) -> torch.Tensor:
    """``0.5 · mean(max((V - R)², (V_clipped - R)²))`` with ``V_clipped`` kept within
    ``clip_range_value`` of the value at collection time."""
    v_clipped = old_values + torch.clamp(values - old_values, -clip_range_value, clip_range_value)
    v_loss_unclipped = (values - returns) ** 2
    v_loss_clipped = (v_clipped - returns) ** 2
    return 0.5 * masked_mean(torch.max(v_loss_unclipped, v_loss_clipped), mask)


def one_step_before_restart(
    advantages: torch.Tensor,
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    restart: torch.Tensor,
    gamma: float,
) -> torch.Tensor:
    """AggreVaTeD's A^{π_g}(s_t, a_t) for the learner's roll-in (paper Alg. 3).

    ``advantages`` come from GAE(λ) over the whole response with the *guide's* values, so
    at the deviation token ``k-1`` (the last roll-in token, ``k = restart``) they already are
    the λ-return through the guide's roll-out. An earlier roll-in token ``t < k-1`` would
    also be credited with the learner's own later deviations; it gets the one-step estimate
    ``r_t + γ·V_g(s_{t+1}) − V_g(s_t)`` instead. Other positions are returned unchanged.
    """
    mask = mask.to(values.dtype)
    v = values * mask
    next_v = torch.cat([v[:, 1:], torch.zeros_like(v[:, :1])], 1)
    delta = (rewards + gamma * next_v - v) * mask
    positions = torch.arange(advantages.shape[1], device=advantages.device).unsqueeze(0)
    before = positions < (restart.to(advantages.device).unsqueeze(1) - 1)
    return torch.where(before, delta, advantages)


def exact_kl(logits: torch.Tensor, ref_logits: torch.Tensor) -> torch.Tensor:
    """Per-token KL(π ‖ π_ref) = Σ_v π(v)·(log π(v) − log π_ref(v)) from both models' logits
    ``[B, T, V]``; unlike the sampled estimate log π(a) − log π_ref(a) it is never negative."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    logr = torch.log_softmax(ref_logits.float(), dim=-1)
    return (logp.exp() * (logp - logr)).sum(-1).clamp(min=0.0)


class AdaptiveKLController:
    """Adaptive KL coefficient with RL4LMs' rule (paper appendix C.1).

    After each iteration, with ``KL`` and ``target`` both per learner token:
    ``coef ← coef · (1 + 0.1 · clip(KL / target − 1, −0.2, 0.2))``, so the coefficient moves
    by up to 2 % per iteration. With ``target=None`` (or 0) it stays fixed.
    """

    RATE = 0.1
    CLIP = 0.2

    def __init__(self, init_kl_coef: float, target: float | None) -> None:
        self.value = float(init_kl_coef)
        self.target = target

    def update(self, current_kl: float) -> float:
        if self.target is not None and self.target > 0:
            error = min(max(current_kl / self.target - 1.0, -self.CLIP), self.CLIP)
            self.value *= 1.0 + self.RATE * error
        return self.value

    def state_dict(self) -> dict:
        return {"value": self.value, "target": self.target}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])
        self.target = state["target"]

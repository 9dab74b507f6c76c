"""The RL trainer: collect → score → advantages → PPO update, one iteration at a time.

It takes built objects (policy, reference, critic, task, config) so tests can inject tiny
ones, and reports progress through a callback, never by printing.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from typing import Callable

import torch

from backends.errors import RlgfError
from tasks.base import Example, Task

from .config import TrainConfig
from .ppo import (
    AdaptiveKLController,
    clipped_policy_loss,
    clipped_value_loss,
    gae,
    kl_penalised_rewards,
    masked_mean,
    masked_whiten,
)
from .rollout import RolloutBatch, learner_rollout
from .tensors import chunks, trim_query, trim_response_width

#: progress callback: ``callback(event, payload)`` with events
#: "start" {"total"}, "phase" {"name"}, "iteration" {metrics}, "message" {"text"}
Callback = Callable[[str, dict], None]


def _noop(event: str, payload: dict) -> None:
    return None


@dataclass
class Buffers:
    """A scored rollout with everything the update needs (all on the policy's device)."""

    batch: RolloutBatch
    scores: torch.Tensor
    old_logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    old_values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    kl: torch.Tensor


class PromptSampler:
    """Draws training prompts without replacement, reshuffling (seeded) each pass."""

    def __init__(self, examples: list[Example], seed: int) -> None:
        if not examples:
            raise RlgfError("the task has no training examples", "check the task's data")
        self.examples = examples
        self.rng = random.Random(seed)
        self.order: list[int] = []

    def draw(self, n: int) -> list[Example]:
        out = []
        while len(out) < n:
            if not self.order:
                self.order = list(range(len(self.examples)))
                self.rng.shuffle(self.order)
            out.append(self.examples[self.order.pop()])
        return out


class Trainer:
    """Token-level PPO with a separate critic and a KL penalty to a frozen reference."""

    def __init__(self, cfg: TrainConfig, task: Task, policy, reference, critic, callback: Callback | None = None):
        self.cfg = cfg
        self.task = task
        self.policy = policy
        self.reference = reference
        self.critic = critic
        self.callback = callback or _noop
        self.device = policy.device
        self.critic.to(self.device)
        self.reference.model.eval()
        for p in self.reference.model.parameters():
            p.requires_grad_(False)
        params = [p for p in policy.model.parameters() if p.requires_grad]
        params += [p for p in critic.parameters() if p.requires_grad]
        self.params = params
        self.optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        self.kl_ctl = AdaptiveKLController(cfg.kl_coef, cfg.target_kl or None, cfg.kl_horizon)
        self.sampler = PromptSampler(task.examples("train"), cfg.seed)
        self.max_new_tokens = cfg.max_new_tokens or task.max_new_tokens
        self.min_new_tokens = min(task.min_new_tokens, self.max_new_tokens)
        self.iteration = 0

    # -- one iteration --------------------------------------------------------------
    def step(self) -> dict:
        t0 = time.perf_counter()
        self.callback("phase", {"name": "rollout"})
        batch = self.collect(self.sampler.draw(self.cfg.episodes))
        t1 = time.perf_counter()
        self.callback("phase", {"name": "reward"})
        scores = self.score(batch)
        t2 = time.perf_counter()
        buffers = self.compute_advantages(batch, scores)
        t3 = time.perf_counter()
        self.callback("phase", {"name": "update"})
        stats = self.update(buffers)
        t4 = time.perf_counter()
        seq_kl = float(buffers.kl.sum(1).mean())
        kl_coef = self.kl_ctl.value
        self.kl_ctl.update(seq_kl, n_steps=len(batch))
        self.iteration += 1
        metrics = {
            "iteration": self.iteration,
            "scheme": batch.scheme,
            "reward_mean": float(scores.mean()),
            "reward_std": float(scores.std()) if len(scores) > 1 else 0.0,
            "kl": seq_kl,
            "kl_coef": kl_coef,
            **stats,
            "response_length": float(batch.response_mask.sum(1).float().mean()),
            **batch.stats,
            "time_rollout_s": t1 - t0,
            "time_reward_s": t2 - t1,
            "time_forward_s": t3 - t2,
            "time_update_s": t4 - t3,
            "time_s": t4 - t0,
        }
        for key in ("pg_loss", "v_loss", "kl", "reward_mean"):
            if not math.isfinite(metrics[key]):
                raise RlgfError(
                    f"training diverged at iteration {self.iteration}: {key} is {metrics[key]}",
                    "lower --lr or --clip-range; the last good checkpoint is kept",
                )
        return metrics

    def collect(self, examples: list[Example]) -> RolloutBatch:
        self.policy.model.eval()
        return learner_rollout(
            self.policy,
            examples,
            self.task,
            max_new_tokens=self.max_new_tokens,
            min_new_tokens=self.min_new_tokens,
            sampling=self.task.train_sampling,
            batch_size=self.cfg.rollout_batch_size,
        )

    def score(self, batch: RolloutBatch) -> torch.Tensor:
        rewards = self.task.reward(batch.prompts, batch.completions, batch.examples)
        if len(rewards) != len(batch):
            raise RlgfError(
                f"the reward returned {len(rewards)} values for {len(batch)} episodes",
                "a reward must return one float per completion",
            )
        return torch.tensor([float(r) for r in rewards], dtype=torch.float32, device=self.device)

    @torch.no_grad()
    def compute_advantages(self, batch: RolloutBatch, scores: torch.Tensor) -> Buffers:
        self.policy.model.eval()
        self.critic.eval()
        lp, ref, val = [], [], []
        for sl in chunks(len(batch), self.cfg.rollout_batch_size):
            args = _slice(batch, sl)
            lp.append(_pad_to(self.policy.response_logprobs(*args), batch.response.shape[1]))
            ref.append(_pad_to(self.reference.response_logprobs(*args), batch.response.shape[1]))
            val.append(_pad_to(self.critic.values(*args), batch.response.shape[1]))
        old_logprobs, ref_logprobs, old_values = torch.cat(lp), torch.cat(ref), torch.cat(val)
        mask = batch.response_mask.float()
        rewards, kl = kl_penalised_rewards(scores, old_logprobs, ref_logprobs, mask, self.kl_ctl.value)
        advantages, returns = gae(rewards, old_values, mask, self.cfg.gamma, self.cfg.lam)
        if self.cfg.whiten_advantages:
            advantages = masked_whiten(advantages, batch.learner_mask.float())
        return Buffers(batch, scores, old_logprobs, ref_logprobs, old_values * mask, advantages, returns, kl)

    def update(self, buf: Buffers) -> dict:
        cfg = self.cfg
        self.policy.model.train()
        self.critic.train()
        totals: dict[str, float] = {}
        steps = 0
        n = len(buf.batch)
        gen = torch.Generator().manual_seed(cfg.seed * 1000003 + self.iteration)
        for _ in range(cfg.epochs):
            perm = torch.randperm(n, generator=gen).tolist()
            for sl in chunks(n, cfg.minibatch_size):
                idx = torch.tensor(perm[sl], device=self.device)
                stats = self._minibatch_step(buf, idx)
                for k, v in stats.items():
                    totals[k] = totals.get(k, 0.0) + v
                steps += 1
        self.policy.model.eval()
        self.critic.eval()
        return {k: v / max(steps, 1) for k, v in totals.items()}

    def _minibatch_step(self, buf: Buffers, idx: torch.Tensor) -> dict:
        cfg = self.cfg
        b = buf.batch
        query, qmask = trim_query(b.query[idx], b.query_mask[idx])
        width = trim_response_width(b.response_mask[idx])
        response, rmask = b.response[idx, :width], b.response_mask[idx, :width]
        pg_mask = b.learner_mask[idx, :width].float()
        v_mask = rmask.float()
        logprobs, entropy = self.policy.response_logprobs(query, qmask, response, rmask, with_entropy=True)
        values = self.critic.values(query, qmask, response, rmask)
        pol = clipped_policy_loss(logprobs, buf.old_logprobs[idx, :width], buf.advantages[idx, :width], pg_mask, cfg.clip_range)
        v_loss = clipped_value_loss(values, buf.old_values[idx, :width], buf.returns[idx, :width], v_mask, cfg.clip_range_value)
        ent = masked_mean(entropy, pg_mask)
        loss = pol.pg_loss + cfg.vf_coef * v_loss - cfg.ent_coef * ent
        if not torch.isfinite(loss):
            raise RlgfError(
                f"training diverged at iteration {self.iteration + 1}: the loss is {float(loss)}",
                "lower --lr or --clip-range; the last good checkpoint is kept",
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
        self.optimizer.step()
        return {
            "loss": float(loss),
            "pg_loss": float(pol.pg_loss),
            "v_loss": float(v_loss),
            "entropy": float(ent),
            "approx_kl": float(pol.approx_kl),
            "clipfrac": float(pol.clipfrac),
            "grad_norm": float(grad_norm),
        }

    # -- state --------------------------------------------------------------------
    def state(self) -> dict:
        return {"iteration": self.iteration, "kl_controller": self.kl_ctl.state_dict(), "alg": self.cfg.alg}


def _slice(batch: RolloutBatch, sl: slice):
    query, qmask = trim_query(batch.query[sl], batch.query_mask[sl])
    width = trim_response_width(batch.response_mask[sl])
    return query, qmask, batch.response[sl, :width], batch.response_mask[sl, :width]


def _pad_to(x: torch.Tensor, width: int) -> torch.Tensor:
    if x.shape[1] == width:
        return x
    pad = torch.zeros(x.shape[0], width - x.shape[1], dtype=x.dtype, device=x.device)
    return torch.cat([x, pad], 1)

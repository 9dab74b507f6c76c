"""The RL trainer: collect → score → advantages → PPO update, one iteration at a time.

Every algorithm is this one update fed by different rollout schemes
(:mod:`rlgf_cli.training.algorithms`). It takes built objects (policy, reference, critics, guide,
task, config) so tests can inject tiny ones, and reports progress through a callback,
never by printing.
"""

from __future__ import annotations

import math
import time
from typing import Callable

import torch

from backends.errors import RlgfError
from backends.precision import (Precision, decoding_copy, freeze_in, refresh_copy, resolve_precision,
                                use_kernels)
from tasks.base import Example, Task, sampled_at

from rlgf_cli.training.config import TrainConfig
from rlgf_cli.training.optimizer import adamw
from rlgf_cli.training.ppo import (
    AdaptiveKLController,
    clipped_policy_loss,
    clipped_value_loss,
    gae,
    kl_penalised_rewards,
    masked_mean,
    masked_whiten,
    one_step_before_restart,
)
from rlgf_cli.training.algorithms import AGGREVATED, GUIDE, LEARNER, Part
from rlgf_cli.training.chunking import EpisodeShape, rollout_chunk
from rlgf_cli.training.distributed import all_sum, any_rank, sum_gradients, world
from rlgf_cli.training.guided import GuidedRollout
from rlgf_cli.training.rollout import RolloutBatch
from rlgf_cli.runtime import derive_seed
from rlgf_cli.training.sampler import PromptSampler  # noqa: F401  (BC and tests take it from here)
from rlgf_cli.training.scoring import Buffers, minibatch_plan, minibatch_tensors, pad_to, score_like_update, scored_pair  # noqa: F401
from rlgf_cli.training.tensors import chunks, concat

#: progress callback: ``callback(event, payload)`` with events
#: "start" {"total"}, "phase" {"name"}, "iteration" {metrics}, "message" {"text"}
Callback = Callable[[str, dict], None]


def _noop(event: str, payload: dict) -> None:
    return None


class TrainerBase:
    """What the run loop needs of every trainer (RL and BC): one :meth:`step` per iteration,
    an optimizer, critics (none for BC), an optional guide, and a resumable :meth:`state`."""

    #: critics by role (``learner``/``guide``); saved with checkpoints
    critics: dict = {}
    #: the guide policy (None when the algorithm uses none)
    guide = None
    optimizer: torch.optim.Optimizer
    iteration: int = 0
    #: what ``--precision`` resolved to on this device (autocast context, frozen weight dtype)
    precision: Precision = Precision("fp32", "default")

    def still_compiled(self) -> list[str]:
        """The trained models that ran through torch.compile to the end (--compile; BC: none)."""
        return []

    def step(self) -> dict:
        """Run one iteration; returns its metrics (one ``metrics.jsonl`` line)."""
        raise NotImplementedError

    def state(self) -> dict:
        raise NotImplementedError

    def load_state(self, state: dict) -> None:
        raise NotImplementedError


class Trainer(TrainerBase):
    """Token-level PPO with separate critics and a KL penalty to a frozen reference."""

    def __init__(self, cfg: TrainConfig, task: Task, policy, reference, critic, callback: Callback | None = None,
                 *, guide=None, guide_critic=None):
        self.cfg = cfg
        self.task = task
        self.policy = policy
        self.reference = reference
        self.guide = guide
        self.callback = callback or _noop
        self.device = policy.device
        self.algorithm = cfg.algorithm
        self.precision = resolve_precision(cfg.precision, self.device)
        task.use_precision(self.precision)  # its reward classifier, if any: bf16 weights under bf16
        if self.algorithm.needs_guide and guide is None:
            raise RlgfError(f"--alg {cfg.alg} needs a guide policy", "pass --guide SPEC (e.g. a BC checkpoint folder)")
        self.critics = {LEARNER: critic}
        if guide_critic is not None:
            self.critics[GUIDE] = guide_critic
        for c in self.critics.values():
            c.to(self.device)
        for trained in (policy.model, *self.critics.values()):  # eager attention under CPU bf16
            use_kernels(trained, self.precision)
        for frozen in (self.reference, guide):  # inference only: no gradients, no dropout
            if frozen is not None and frozen.trainable and frozen is not policy:  # (not an API guide)
                frozen.model.eval()
                for p in frozen.model.parameters():
                    p.requires_grad_(False)
                freeze_in(frozen, self.precision)  # bf16 weights under bf16: never re-cast per step
        params = [p for p in policy.model.parameters() if p.requires_grad]
        for c in self.critics.values():
            params += [p for p in c.parameters() if p.requires_grad]
        self.params = params
        self.optimizer = adamw(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        self.kl_ctl = AdaptiveKLController(cfg.kl_coef, cfg.target_kl or None)
        self.part_weights: list[float] = [1.0]
        self.sampler = PromptSampler(task.examples("train"), cfg.seed)
        max_new = cfg.max_new_tokens or task.max_new_tokens
        #: bf16 autocast under --precision bf16 (weights and optimizer state stay float32)
        self.autocast = self.precision.autocast()
        for p in (policy, guide):  # decoding steps replayed as CUDA graphs (GPU only, opt-in)
            if p is not None:
                p.use_cuda_graphs(bool(cfg.cuda_graphs) and self.device.type == "cuda")
        #: which trained models score and update through torch.compile (--compile)
        self._trained = {"learner": policy, **{f"{k} critic": c for k, c in self.critics.items()}}
        self.compiled = [name for name, model in self._trained.items() if cfg.compile and model.use_compile(True)]
        #: episodes per generation / scoring chunk: what the device's memory allows on a GPU
        self.rollout_batch_size = cfg.rollout_batch_size or self._auto_chunk(max_new)
        self.engine = GuidedRollout(
            policy, guide, task, max_new_tokens=max_new, min_new_tokens=min(task.min_new_tokens, max_new),
            sampling=task.train_sampling, guide_sampling=guide_sampling(cfg, task.train_sampling),
        )
        self.iteration = 0
        #: per part batch (by id), its rows of the iteration's scoring (only during a step)
        self._prescored: dict[int, dict] = {}
        #: under bf16 the learner decodes from a bf16 copy of its weights, refreshed after each
        #: update (autocast alone would re-cast every weight at every one-token decoding step)
        self.decoder = None
        if self.precision.bf16:  # bf16 matrices, float32 embeddings and norms: autocast's numbers exactly
            self.decoder = decoding_copy(policy, self.precision)
            self.engine.learner = self.decoder

    @property
    def critic(self):
        return self.critics[LEARNER]

    # -- one iteration --------------------------------------------------------------
    def step(self) -> dict:
        cfg = self.cfg
        t0 = time.perf_counter()
        ctx = self.algorithm.context(self.iteration, cfg.iterations, alpha=cfg.alpha, betas=cfg.betas(),
                                     switch=cfg.switch_iteration)
        parts = self.algorithm.plan(ctx)
        self.callback("phase", {"name": "rollout"})
        w = world()
        # every rank draws the same global batch and keeps its shard of each part
        examples = self.sampler.draw(cfg.episodes * w.size)
        batches, start = [], 0
        for j, part in enumerate(parts):
            n = len(examples) - start if j == len(parts) - 1 else round(part.share * len(examples))
            n -= n % w.size
            per_rank = n // w.size
            first = start + w.rank * per_rank
            with self.autocast:
                batch = self.collect(examples[first:first + per_rank], part, part_index=j, first_index=first)
            batch.global_index = torch.arange(first, first + per_rank, device=self.device)
            batches.append((part, batch))
            start += n
        t1 = time.perf_counter()
        self.callback("phase", {"name": "reward"})
        scored = [(j, part, batch, self.score(batch)) for j, (part, batch) in enumerate(batches) if len(batch)]
        t2 = time.perf_counter()
        self.part_weights = [part.weight for part in parts]
        with self.autocast:
            self._prescore(scored)
            try:
                buffers = concat([self.compute_advantages(b, s, part, part_id=j) for j, part, b, s in scored],
                                 self.pad_id)
            finally:
                self._prescored = {}
        t3 = time.perf_counter()
        self.callback("phase", {"name": "update"})
        lr = self.learning_rate()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        stats = self.update(buffers)
        self.refresh_decoder()
        t4 = time.perf_counter()
        batch, scores = buffers.batch, buffers.scores
        n, s1, s2, kl_sum, exact_sum, learner_sum, len_sum = all_sum(
            [len(scores), float(scores.sum()), float((scores.double() ** 2).sum()), float(buffers.kl.sum()),
             float(buffers.kl_exact.sum()), float(batch.learner_mask.sum()), float(batch.response_mask.sum())]).tolist()
        token_kl = kl_sum / max(learner_sum, 1.0)
        token_kl_exact = exact_sum / max(learner_sum, 1.0)
        kl_coef = self.kl_ctl.value
        self.kl_ctl.update(token_kl_exact)  # per learner token, as the target; exact, so never negative
        self.iteration += 1
        counts = dict(zip(batch.stats, all_sum([float(v) for v in batch.stats.values()]).tolist()))
        metrics = {
            "iteration": self.iteration,
            "scheme": ",".join(p.scheme.name for _, p, _, _ in scored),
            "reward_mean": s1 / max(n, 1),
            "reward_std": math.sqrt(max(s2 - s1 * s1 / n, 0.0) / (n - 1)) if n > 1 else 0.0,
            "kl": token_kl,
            "kl_exact": token_kl_exact,
            "kl_sequence": kl_sum / max(n, 1),
            "kl_coef": kl_coef,
            "lr": lr,
            **stats,
            "response_length": len_sum / max(n, 1),
            **{k: int(v) for k, v in counts.items()},
            "time_rollout_s": t1 - t0,
            "time_reward_s": t2 - t1,
            "time_forward_s": t3 - t2,
            "time_update_s": t4 - t3,
            "time_s": t4 - t0,
        }
        for key in ("pg_loss", "v_loss", "kl", "reward_mean"):
            if key in metrics and not math.isfinite(metrics[key]):
                raise RlgfError(
                    f"training diverged at iteration {self.iteration}: {key} is {metrics[key]}",
                    "lower --lr or --clip-range",
                )
        return metrics

    def refresh_decoder(self) -> None:
        """Copy the learner's updated weights into its bf16 decoding copy (if it has one)."""
        if self.decoder is not None:
            refresh_copy(self.decoder.model, self.policy.model)

    def learning_rate(self) -> float:
        """This iteration's learning rate under ``--lr-schedule`` (linear: base·(1 − t/T))."""
        base = self.cfg.learning_rate
        if self.cfg.lr_schedule == "linear":
            return base * max(0.0, 1.0 - self.iteration / self.cfg.iterations)
        return base

    @property
    def pad_id(self) -> int:
        from rlgf_cli.training.rollout import pad_id

        return pad_id(self.policy)

    def collect(self, examples: list[Example], part: Part, *, part_index: int = 0, first_index: int = 0) -> RolloutBatch:
        self.policy.model.eval()
        seed = derive_seed(derive_seed(self.cfg.seed, self.iteration), part_index, stride=16)
        return self.engine.collect(examples, part.scheme, part.beta, batch_size=self.rollout_batch_size,
                                   chunk_seed=seed, first_index=first_index)

    def score(self, batch: RolloutBatch) -> torch.Tensor:
        rewards = self.task.reward(batch.prompts, batch.completions, batch.examples)
        if len(rewards) != len(batch):
            raise RlgfError(
                f"the reward returned {len(rewards)} values for {len(batch)} episodes",
                "a reward must return one float per completion",
            )
        scores = torch.tensor([float(r) for r in rewards], dtype=torch.float32, device=self.device)
        bad = (~torch.isfinite(scores)).nonzero().flatten().tolist()
        if any_rank(bool(bad)) and not bad:
            raise RlgfError(f"another rank got a non-finite reward in iteration {self.iteration + 1}",
                            "fix the reward")
        if bad:
            raise RlgfError(
                f"the reward is {scores[bad[0]].item()} for episode {bad[0]} of iteration {self.iteration + 1}",
                "fix the reward",
            )
        return scores

    def _auto_chunk(self, max_new: int) -> int:
        models = [p.model for p in (self.policy, self.guide) if p is not None and p.trainable]
        bf16 = self.precision.bf16
        n, why = rollout_chunk(
            self.cfg.episodes, self.device, configs=[m.config for m in models],
            shape=EpisodeShape(self.task.prompt_max_tokens or 128, max_new),
            dtype_bytes=2 if bf16 else next(self.policy.model.parameters()).element_size(),
            trainable_params=sum(p.numel() for p in self.params),
        )
        if self.device.type == "cuda":
            self.callback("message", {"text": why})
        return n

    @torch.no_grad()
    def compute_advantages(self, batch: RolloutBatch, scores: torch.Tensor, part: Part | None = None,
                           part_id: int = 0) -> Buffers:
        """Old log-probs, reference log-probs, the exact KL and values, then KL-penalised GAE.

        The advantages come from the critic of the scheme (learner or guide); for AggreVaTeD
        the roll-in tokens before the restart get the one-step A^{π_g} (``--aggrevated-advantage``).
        The part's weight (LOLS's α mix) is applied to its policy loss in the update.
        """
        critic_name = part.scheme.critic if part is not None else LEARNER
        critic = self.critics[critic_name]
        self.policy.model.eval()
        critic.eval()
        width = batch.response.shape[1]
        pre = self._prescored.get(id(batch))
        if pre is not None:  # scored with the whole iteration, in the update's minibatches (see _prescore)
            old_logprobs, ref_logprobs, kls, old_values = (pre[k][:, :width] for k in
                                                           ("logprobs", "ref_logprobs", "kl_exact", "values"))
        else:
            lp, ref, val, kl_parts = [], [], [], []
            for sl in chunks(len(batch), self.rollout_batch_size):
                args = minibatch_tensors(batch, sl)
                logprobs, ref_lp, kl_exact = scored_pair(self.policy, self.reference, args)
                lp.append(pad_to(logprobs, width))
                ref.append(pad_to(ref_lp, width))
                kl_parts.append(pad_to(kl_exact, width))
                val.append(pad_to(critic.values(*args), width))
            old_logprobs, ref_logprobs, old_values = torch.cat(lp).float(), torch.cat(ref).float(), torch.cat(val).float()
            kls = torch.cat(kl_parts)
        mask = batch.response_mask.float()
        learner = batch.learner_mask.float()
        kl_exact = kls.float() * learner * mask
        rewards, kl = kl_penalised_rewards(scores, old_logprobs, ref_logprobs, mask, self.kl_ctl.value, kl_mask=learner)
        advantages, returns = gae(rewards, old_values, mask, self.cfg.gamma, self.cfg.lam)
        if part is not None and part.scheme is AGGREVATED and self.cfg.aggrevated_advantage == "one-step":
            advantages = one_step_before_restart(advantages, rewards, old_values, mask, batch.restart, self.cfg.gamma)
        if self.cfg.whiten_advantages:
            advantages = _whiten(advantages, learner)
        critic_id = torch.full((len(batch),), 1 if critic_name == GUIDE else 0, dtype=torch.long, device=self.device)
        global_index = batch.global_index
        if global_index is None:
            global_index = torch.arange(len(batch), device=self.device)
        part_ids = torch.full((len(batch),), part_id, dtype=torch.long, device=self.device)
        return Buffers(batch, scores, old_logprobs, ref_logprobs, old_values * mask, advantages,
                       returns, kl, kl_exact, critic_id, global_index, part_ids)

    def update(self, buf: Buffers) -> dict:
        """PPO epochs over the batch. Minibatches are drawn from a permutation of the *global*
        batch (the same on every rank); each rank works on its rows of each minibatch."""
        # dropout stays off (eval mode): the ratio of new to old log-probs starts at exactly 1
        self.policy.model.eval()
        for c in self.critics.values():
            c.eval()
        totals: dict[str, float] = {}
        steps = 0
        for epoch in self.minibatches(buf.global_index):
            for idx in epoch:
                stats = self._minibatch_step(buf, idx)
                for k, v in stats.items():
                    totals[k] = totals.get(k, 0.0) + v
                steps += 1
        return {k: v / max(steps, 1) for k, v in totals.items()}

    def minibatches(self, global_index: torch.Tensor) -> list[list[torch.Tensor]]:
        """Per epoch, this rank's row indices of each minibatch (see :func:`minibatch_plan`)."""
        return minibatch_plan(global_index, epochs=self.cfg.epochs, minibatch_size=self.cfg.minibatch_size,
                              seed=derive_seed(self.cfg.seed, self.iteration), device=self.device)

    def _prescore(self, scored) -> None:
        """Score the iteration's whole batch in the update's first-epoch minibatches, so the
        first minibatch sees exactly the old log-probs it recomputes (ratio 1, bf16 included);
        :meth:`compute_advantages` then takes each part's rows from here."""
        self._prescored = {}
        if not scored:
            return
        batches = [b for _, _, b, _ in scored]
        full = concat(batches, self.pad_id)
        names = [part.scheme.critic for _, part, b, _ in scored for _ in range(len(b))]
        self.policy.model.eval()
        for c in self.critics.values():
            c.eval()
        first_epoch = self.minibatches(full.global_index)[0]
        pre = score_like_update(self.policy, self.reference, self.critics, full, names, first_epoch)
        start = 0
        for b in batches:
            self._prescored[id(b)] = {k: v[start:start + len(b)] for k, v in pre.items()}
            start += len(b)

    def _minibatch_step(self, buf: Buffers, idx: torch.Tensor) -> dict:
        """One optimizer step. Every loss is a sum over this rank's tokens divided by the
        token count of the whole (global) minibatch; gradients are then summed over ranks.

        With several parts (LOLS) each part's policy loss is normalised over its own learner
        tokens and weighted by the part's weight: α·L(A^{π_θ}) + (1−α)·L(A^{π_g}), so the
        mix does not depend on how many learner tokens each part happens to have."""
        cfg = self.cfg
        b = buf.batch
        has_rows = len(idx) > 0
        if has_rows:
            query, qmask, response, rmask = minibatch_tensors(b, idx)  # as score_like_update trims them
            width = response.shape[1]
            pg_mask = b.learner_mask[idx, :width].float()
            own = {}
            for cid, name in ((0, LEARNER), (1, GUIDE)):
                rows = (buf.critic_id[idx] == cid).nonzero().flatten()
                mask = (b.learner_mask if name == LEARNER else b.guide_mask)[idx[rows], :width].float()
                own[name] = (rows, mask)
        n_parts = len(self.part_weights)
        part_masks = [pg_mask * (buf.part_id[idx] == j).unsqueeze(1).float() for j in range(n_parts)] \
            if has_rows else []
        local = [float(pg_mask.sum()) if has_rows else 0.0,
                 float(own[LEARNER][1].sum()) if has_rows else 0.0,
                 float(own[GUIDE][1].sum()) if has_rows else 0.0,
                 *([float(m.sum()) for m in part_masks] if has_rows else [0.0] * n_parts)]
        g_pg, g_lv, g_gv, *g_parts = all_sum(local).tolist()
        loss = torch.zeros((), device=self.device)
        logged = [0.0] * 7  # pg_loss, entropy, approx_kl, clipfrac, v_loss, guide_v_loss (as global sums), any
        if has_rows and local[0] > 0:
            with self.autocast:
                # with no entropy bonus the entropy is only logged: keep it out of the backward pass
                logprobs, entropy = self.policy.response_logprobs(query, qmask, response, rmask, with_entropy=True,
                                                                  entropy_grad=cfg.ent_coef > 0)
            logprobs, entropy = logprobs.float(), entropy.float()
            old, adv = buf.old_logprobs[idx, :width], buf.advantages[idx, :width]
            pg_total = torch.zeros((), device=self.device)
            for j, (weight, mask_j, g_j) in enumerate(zip(self.part_weights, part_masks, g_parts)):
                if g_j > 0 and local[3 + j] > 0:
                    part_loss = clipped_policy_loss(logprobs, old, adv, mask_j, cfg.clip_range).pg_loss
                    pg_total = pg_total + weight * part_loss * (local[3 + j] / g_j)
            pol = clipped_policy_loss(logprobs, old, adv, pg_mask, cfg.clip_range)  # ratio statistics, all parts
            ent = masked_mean(entropy, pg_mask)
            share = local[0] / g_pg
            loss = loss + pg_total - cfg.ent_coef * ent * share
            logged[:4] = [pg_total.item(), ent.item() * share, pol.approx_kl.item() * share,
                          pol.clipfrac.item() * share]
        # each critic learns the value of its own policy, on the tokens that policy generated
        for slot, name, g_count in ((4, LEARNER, g_lv), (5, GUIDE, g_gv)):
            if not has_rows or name not in self.critics:
                continue
            rows, mask = own[name]
            if mask.sum() == 0:
                continue
            with self.autocast:
                values = self.critics[name].values(query[rows], qmask[rows], response[rows], rmask[rows])
            values = values.float()
            v_loss = clipped_value_loss(values, buf.old_values[idx[rows], :width], buf.returns[idx[rows], :width], mask,
                                        cfg.clip_range_value)
            share = float(mask.sum()) / g_count
            loss = loss + cfg.vf_coef * v_loss * share
            logged[slot] = v_loss.item() * share
        if has_rows and not torch.isfinite(loss):
            logged[6] = 1.0
        sums = all_sum(logged).tolist() if world().enabled else logged
        if sums[6] > 0:
            raise RlgfError(
                f"training diverged at iteration {self.iteration + 1}: the loss is not finite",
                "lower --lr or --clip-range",
            )
        if g_pg == 0 and g_lv == 0 and g_gv == 0:
            return {}
        self.optimizer.zero_grad(set_to_none=True)
        if loss.requires_grad:
            loss.backward()
        sum_gradients(self.params)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
        self.optimizer.step()
        out = {"grad_norm": float(grad_norm)}
        if g_pg > 0:
            out.update(pg_loss=sums[0], entropy=sums[1], approx_kl=sums[2], clipfrac=sums[3])
        if g_lv > 0:
            out["v_loss"] = sums[4]
        if g_gv > 0:
            out["guide_v_loss"] = sums[5]
        out["loss"] = out.get("pg_loss", 0.0) - cfg.ent_coef * out.get("entropy", 0.0) + cfg.vf_coef * (
            out.get("v_loss", 0.0) + out.get("guide_v_loss", 0.0))
        return out

    def still_compiled(self) -> list[str]:
        """Those of :attr:`compiled` whose torch.compile did not fail (and fall back to eager)."""
        return [name for name in self.compiled
                if getattr(getattr(self._trained[name], "compiled", None), "failed", None) is None]

    # -- state --------------------------------------------------------------------
    def state(self) -> dict:
        return {"iteration": self.iteration, "kl_controller": self.kl_ctl.state_dict(), "alg": self.cfg.alg,
                "guide_calls": self.engine.guide_calls, "sampler": self.sampler.state_dict()}

    def load_state(self, state: dict) -> None:
        """Restore what :meth:`state` saved (the optimizer and RNG are restored by the caller)."""
        self.iteration = int(state["iteration"])
        self.kl_ctl.load_state_dict(state["kl_controller"])
        self.kl_ctl.target = self.cfg.target_kl or None  # the coefficient carries on; --target-kl is this run's
        self.engine.guide_calls = int(state.get("guide_calls", 0))
        if "sampler" in state:
            self.sampler.load_state_dict(state["sampler"])


def guide_sampling(cfg: TrainConfig, learner_sampling):
    """How the guide samples its roll-ins and roll-outs: the learner's sampling with the
    ``--guide-temperature/--guide-top-k/--guide-top-p`` the user gave (None when none was)."""
    given = {"temperature": cfg.guide_temperature, "top_k": cfg.guide_top_k, "top_p": cfg.guide_top_p}
    if all(v is None for v in given.values()):
        return None
    return sampled_at(learner_sampling, **given, what="--guide-* sampling")


def _whiten(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """:func:`masked_whiten` with the statistics of the global (all ranks) batch."""
    if not world().enabled:
        return masked_whiten(x, mask) if mask.sum() > 1 else x * mask
    m = mask.to(x.dtype)
    n, s1, s2 = all_sum([float(m.sum()), float((x * m).sum()), float((x.double() ** 2 * m.double()).sum())]).tolist()
    if n <= 1:
        return x * m
    mean = s1 / n
    var = (s2 - n * mean * mean) / (n - 1)
    return (x - mean) * (1.0 / math.sqrt(max(var, 0.0) + 1e-8)) * m

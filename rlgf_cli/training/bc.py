"""Behaviour cloning: supervised fine-tuning of the learner on the task's references.

Each iteration draws ``episodes`` supervised examples (prompt → target continuation) and
takes one pass over them in minibatches, minimising the token-level negative
log-likelihood of the target.
"""

from __future__ import annotations

import math
import time

import torch

from backends.errors import RlgfError
from backends.precision import resolve_precision, use_kernels
from tasks.base import Task

from rlgf_cli.training.config import TrainConfig
from rlgf_cli.training.optimizer import adamw
from rlgf_cli.training.distributed import all_sum, shard, sum_gradients, world
from rlgf_cli.training.ppo import masked_mean
from rlgf_cli.training.tensors import chunks
from rlgf_cli.training.trainer import Callback, PromptSampler, TrainerBase, _noop


class BCTrainer(TrainerBase):
    """Supervised fine-tuning on the task's references (``--alg bc``)."""

    def __init__(self, cfg: TrainConfig, task: Task, policy, callback: Callback | None = None) -> None:
        self.cfg = cfg
        self.task = task
        self.policy = policy
        self.callback = callback or _noop
        self.device = policy.device
        self.precision = resolve_precision(cfg.precision, self.device)
        self.autocast = self.precision.autocast()  # the weights and optimizer state stay float32
        use_kernels(policy.model, self.precision)  # eager under CPU bf16, like the RL trainer
        self.examples = [ex for ex in task.bc_examples() if ex.target]
        self.sampler = PromptSampler(self.examples, cfg.seed)
        params = [p for p in policy.model.parameters() if p.requires_grad]
        self.params = params
        self.optimizer = adamw(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        self.target_max_tokens = max(cfg.max_new_tokens or task.max_new_tokens, 64)
        self.iteration = 0

    def step(self) -> dict:
        t0 = time.perf_counter()
        # data parallel: every rank draws the same global batch and trains on its shard
        examples = shard(self.sampler.draw(self.cfg.episodes * world().size))
        self.policy.model.train()
        losses, tokens = [], 0
        for sl in chunks(len(examples), self.cfg.minibatch_size):
            mb = examples[sl]
            query, qmask = self.policy.encode_prompts(self.task.prompts_for(mb, self.policy), self.task.prompt_max_tokens)
            # targets end with EOS, so the cloned policy learns where a reference stops
            target, tmask = self.policy.encode_responses([ex.target for ex in mb], self.target_max_tokens,
                                                         append_eos=True)
            query, qmask = query.to(self.device), qmask.to(self.device)
            target, tmask = target.to(self.device), tmask.to(self.device)
            with self.autocast:
                logprobs = self.policy.response_logprobs(query, qmask, target, tmask).float()
            local = float(tmask.sum())
            total = float(all_sum([local])[0])
            loss = -masked_mean(logprobs, tmask.float()) * (local / max(total, 1.0))
            if not torch.isfinite(loss):
                raise RlgfError(
                    f"training diverged at iteration {self.iteration + 1}: the loss is {loss.item()}",
                    "lower --lr",
                )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            sum_gradients(self.params)
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.max_grad_norm)
            self.optimizer.step()
            losses.append(float(all_sum([loss.item()])[0]))
            tokens += int(tmask.sum())
        self.policy.model.eval()
        self.iteration += 1
        mean_loss = sum(losses) / len(losses)
        return {
            "iteration": self.iteration,
            "scheme": "bc",
            "bc_loss": mean_loss,
            "bc_perplexity": math.exp(min(mean_loss, 50.0)),
            "target_tokens": tokens,
            "time_s": time.perf_counter() - t0,
        }

    def state(self) -> dict:
        return {"iteration": self.iteration, "alg": "bc", "sampler": self.sampler.state_dict()}

    def load_state(self, state: dict) -> None:
        self.iteration = int(state["iteration"])
        if "sampler" in state:
            self.sampler.load_state_dict(state["sampler"])

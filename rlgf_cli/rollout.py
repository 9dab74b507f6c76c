"""Collecting episodes: prompts in, token batches with who-generated-what masks out.

A :class:`RolloutBatch` is what the update consumes. ``learner_mask`` marks the response
tokens the learner generated (the policy-gradient loss applies only there); for plain PPO
that is every valid response token.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from backends.base import Sampling, TokenPolicy
from tasks.base import Example, Task

from .tensors import cat_padded, chunks


@dataclass
class RolloutBatch:
    examples: list[Example]
    prompts: list[str]
    completions: list[str]
    query: torch.Tensor
    query_mask: torch.Tensor
    response: torch.Tensor
    response_mask: torch.Tensor
    #: 1 where the learner generated the token (policy-loss mask)
    learner_mask: torch.Tensor
    scheme: str = "learner"
    stats: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.prompts)


def pad_id(policy: TokenPolicy) -> int:
    tok = policy.tokenizer
    pid = getattr(tok, "pad_token_id", None)
    if pid is None:
        pid = getattr(tok, "eos_token_id", None)
    return int(pid or 0)


@torch.no_grad()
def learner_rollout(
    policy: TokenPolicy,
    examples: Sequence[Example],
    task: Task,
    *,
    max_new_tokens: int,
    min_new_tokens: int,
    sampling: Sampling,
    batch_size: int,
) -> RolloutBatch:
    """The learner rolls in and out on its own: plain on-policy episodes (PPO)."""
    prompts = [ex.prompt for ex in examples]
    queries, qmasks, responses, rmasks = [], [], [], []
    for sl in chunks(len(prompts), batch_size):
        q, qm = policy.encode_prompts(prompts[sl], task.prompt_max_tokens)
        q, qm = q.to(policy.device), qm.to(policy.device)
        r, rm = policy.generate(
            q, qm, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens, sampling=sampling
        )
        queries.append(q)
        qmasks.append(qm)
        responses.append(r)
        rmasks.append(rm)
    pid = pad_id(policy)
    query = cat_padded(queries, pid, "left")
    query_mask = cat_padded(qmasks, 0, "left")
    response = cat_padded(responses, pid, "right")
    response_mask = cat_padded(rmasks, 0, "right")
    completions = policy.decode(response, response_mask)
    learner_tokens = int(response_mask.sum())
    return RolloutBatch(
        examples=list(examples),
        prompts=prompts,
        completions=completions,
        query=query,
        query_mask=query_mask,
        response=response,
        response_mask=response_mask,
        learner_mask=response_mask.clone(),
        scheme="learner",
        stats={"learner_tokens": learner_tokens, "guide_tokens": 0, "guide_calls": 0},
    )

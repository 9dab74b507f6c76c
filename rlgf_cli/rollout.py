"""What a rollout produces: token batches with who-generated-what masks.

A :class:`RolloutBatch` is what the update consumes. ``learner_mask`` marks the response
tokens the learner generated (the policy-gradient loss applies only there), ``guide_mask``
those the guide generated; for plain PPO every valid token is the learner's. The engine
that fills it lives in :mod:`rlgf_cli.guided`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import torch

from backends.base import TokenPolicy
from tasks.base import Example


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
    #: 1 where the guide generated the token
    guide_mask: torch.Tensor
    #: per episode: the restart point k (response tokens taken from the roll-in)
    restart: torch.Tensor
    scheme: str = "ppo"
    stats: dict = field(default_factory=dict)
    #: per episode: its index in the iteration's global batch (set by the trainer)
    global_index: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.prompts)


def pad_id(policy: TokenPolicy) -> int:
    tok = policy.tokenizer
    pid = getattr(tok, "pad_token_id", None)
    if pid is None:
        pid = getattr(tok, "eos_token_id", None)
    return int(pid or 0)

"""What a rollout produces: token batches with who-generated-what masks.

A :class:`RolloutBatch` is what the update consumes. ``learner_mask`` marks the response
tokens the learner generated (the policy-gradient loss applies only there), ``guide_mask``
those the guide generated; for plain PPO every valid token is the learner's. The engine
that fills it lives in :mod:`rlgf_cli.training.guided`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import torch

from backends.base import TokenPolicy
from tasks.base import Example


_LEFT = {"pad": "left", "pad_value": "pad_id"}
_RIGHT_TOKENS = {"pad": "right", "pad_value": "pad_id"}
_RIGHT = {"pad": "right", "pad_value": 0}


@dataclass
class RolloutBatch:
    """B episodes; queries left-padded to Q, responses right-padded to R (B, Q, R below)."""

    examples: list[Example]
    prompts: list[str]
    completions: list[str]
    query: torch.Tensor = field(metadata=_LEFT)  # (B, Q) prompt token ids
    query_mask: torch.Tensor = field(metadata={"pad": "left"})  # (B, Q) 1 = real prompt token
    response: torch.Tensor = field(metadata=_RIGHT_TOKENS)  # (B, R) generated token ids
    response_mask: torch.Tensor = field(metadata=_RIGHT)  # (B, R) 1 = valid response token
    #: 1 where the learner generated the token (policy-loss mask)
    learner_mask: torch.Tensor = field(metadata=_RIGHT)  # (B, R)
    #: 1 where the guide generated the token
    guide_mask: torch.Tensor = field(metadata=_RIGHT)  # (B, R)
    #: per episode: the restart point k (response tokens taken from the roll-in)
    restart: torch.Tensor = None  # (B,)
    scheme: str = "ppo"
    stats: dict = field(default_factory=dict)
    #: per episode: its index in the iteration's global batch (set by the trainer)
    global_index: torch.Tensor | None = None  # (B,)

    def __len__(self) -> int:
        return len(self.prompts)


def pad_id(policy: TokenPolicy) -> int:
    tok = policy.tokenizer
    pid = getattr(tok, "pad_token_id", None)
    if pid is None:
        pid = getattr(tok, "eos_token_id", None)
    return int(pid or 0)

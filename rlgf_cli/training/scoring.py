"""Old log-probabilities, reference log-probabilities, the exact KL and values, scored the
way the update will see them.

The PPO ratio at the first minibatch of an iteration is exactly 1 only when the old
log-probabilities come from the very same computation as the update's: the same rows in
one forward pass, the same trimming of padding, the same precision. Padding is computed
like any token, so a different batch composition changes the numbers (by ~1e-7 in fp32 and
~1e-2 under bf16). :func:`score_like_update` therefore scores the iteration's batch in the
minibatches of the update's first epoch (:meth:`Trainer.minibatches`), trimmed as
``_minibatch_step`` trims them, each critic on the rows it scores there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from backends.hf.util import token_logprobs
from rlgf_cli.training.distributed import all_sum, world
from rlgf_cli.training.ppo import exact_kl
from rlgf_cli.training.rollout import RolloutBatch
from rlgf_cli.training.tensors import chunks, trim_query, trim_response_width

_R = {"pad": "right", "pad_value": 0.0}


@dataclass
class Buffers:
    """Scored rollouts with everything the update needs (all on the policy's device);
    B episodes, R response positions."""

    batch: RolloutBatch
    scores: torch.Tensor  # (B,) the task's reward per episode
    old_logprobs: torch.Tensor = field(metadata=_R)  # (B, R) log π_θ_old(a|s)
    ref_logprobs: torch.Tensor = field(metadata=_R)  # (B, R) log π_ref(a|s)
    old_values: torch.Tensor = field(metadata=_R)  # (B, R) V(s) of the part's critic
    advantages: torch.Tensor = field(metadata=_R)  # (B, R) whitened over the part's learner tokens
    returns: torch.Tensor = field(metadata=_R)  # (B, R) value targets
    kl: torch.Tensor = field(metadata=_R)  # (B, R) sampled log π − log π_ref on learner tokens
    kl_exact: torch.Tensor = field(metadata=_R)  # (B, R) KL(π‖π_ref) on learner tokens
    #: per episode: 0 = the learner's critic gives its advantages, 1 = the guide's
    critic_id: torch.Tensor = None  # (B,)
    #: per episode: its index in the global (all ranks) batch of the iteration
    global_index: torch.Tensor = None  # (B,)
    #: per episode: which part of the iteration's plan it belongs to
    part_id: torch.Tensor = None  # (B,)


def minibatch_plan(global_index: torch.Tensor, *, epochs: int, minibatch_size: int, seed: int,
                   device) -> list[list[torch.Tensor]]:
    """Per epoch, this rank's row indices of each minibatch: chunks of a permutation of the
    *global* batch (the same on every rank; ``global_index`` maps this rank's rows into it)."""
    w = world()
    n_global = int(all_sum([len(global_index)])[0])
    local_of = {int(g): i for i, g in enumerate(global_index.tolist())}
    gen = torch.Generator().manual_seed(seed)
    plan = []
    for _ in range(epochs):
        perm = torch.randperm(n_global, generator=gen).tolist()
        plan.append([torch.tensor([local_of[g] for g in perm[sl] if g in local_of], dtype=torch.long, device=device)
                     for sl in chunks(n_global, minibatch_size * w.size)])
    return plan


def minibatch_tensors(batch, idx) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(query, query_mask, response, response_mask)`` of the rows ``idx`` (a slice or an index
    tensor), with the columns that are padding in every one of these rows dropped."""
    query, qmask = trim_query(batch.query[idx], batch.query_mask[idx])
    width = trim_response_width(batch.response_mask[idx])
    return query, qmask, batch.response[idx, :width], batch.response_mask[idx, :width]


def scored_pair(policy, reference, args) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(log π(a), log π_ref(a), KL(π‖π_ref))`` per response token, one forward pass each
    (the log-probabilities computed as :meth:`response_logprobs` computes them)."""
    response = args[2]
    logits = policy.response_logits(*args).float()
    ref_logits = reference.response_logits(*args).float()
    return token_logprobs(logits, response), token_logprobs(ref_logits, response), exact_kl(logits, ref_logits)


def pad_to(x: torch.Tensor, width: int) -> torch.Tensor:
    if x.shape[1] == width:
        return x
    pad = torch.zeros(x.shape[0], width - x.shape[1], dtype=x.dtype, device=x.device)
    return torch.cat([x, pad], 1)


@torch.no_grad()
def score_like_update(policy, reference, critics: dict, batch, critic_names: list[str], minibatches) -> dict:
    """Score ``batch`` minibatch by minibatch; ``critic_names[i]`` names the critic of row ``i``.

    Returns ``{"logprobs", "ref_logprobs", "kl_exact", "values"}``, each ``(B, R)`` float32
    with zeros beyond a minibatch's trimmed width.
    """
    n, width = batch.response.shape
    dev = batch.response.device
    out = {k: torch.zeros(n, width, dtype=torch.float32, device=dev)
           for k in ("logprobs", "ref_logprobs", "kl_exact", "values")}
    for idx in minibatches:
        if len(idx) == 0:
            continue
        args = minibatch_tensors(batch, idx)
        w = args[2].shape[1]
        lp, ref, kl = scored_pair(policy, reference, args)
        out["logprobs"][idx, :w] = lp.float()
        out["ref_logprobs"][idx, :w] = ref.float()
        out["kl_exact"][idx, :w] = kl.float()
        names = [critic_names[int(i)] for i in idx.tolist()]
        for name in dict.fromkeys(names):
            rows = torch.tensor([k for k, nm in enumerate(names) if nm == name], dtype=torch.long, device=dev)
            values = critics[name].values(args[0][rows], args[1][rows], args[2][rows], args[3][rows])
            out["values"][idx[rows], :w] = values.float()
    return out

"""The roll-in / roll-out engine.

For each episode a coin with probability β picks the roll-in policy (the scheme's mixed-in
policy, else the roll-out policy itself). Where the two differ, a restart point ``k`` is
drawn uniformly over ``{1 … m-1}`` for a roll-in of ``m`` tokens (its EOS included) and the
roll-out policy continues from prompt + the first ``k`` roll-in tokens: each policy writes at
least one token of a switched episode, as in the authors' code (a ``k`` of 0 would make an
AggreVaTeD episode without one learner token, or a PPO++ episode the guide never touched).
Two ways to run it:

* **lock-step** (local models sharing the learner's vocabulary, causal or encoder-decoder,
  no beam search — the usual case): both models decode in one loop
  (:func:`backends.hf.decode.lockstep_generate`). The roll-out model reads each roll-in token in
  the same batched step that decodes the other rows, so its prefix is never re-decoded, needs
  no extra prefill and pads no other row; the guided batch costs one plain generation plus
  the roll-in model's steps over its own rows.
* **two passes** (beam search, guides with another tokenizer or behind an API): the roll-in
  first, then one batched ``generate`` call whose prefix is prefilled in one pass, never
  re-decoded.

Tokens are always counted in the *learner's* tokenizer. A guide with the same vocabulary
works on tokens directly; any other guide (another tokenizer, an API model) hands off at
the text level and its text is re-tokenized by the learner.

The returned :class:`RolloutBatch` marks, per token, who generated it (``learner_mask`` /
``guide_mask``), so every loss can be masked to the tokens it belongs to.
"""

from __future__ import annotations

from typing import Sequence

import torch

from backends.base import Sampling, TokenPolicy
from backends.hf.decode import can_step, lockstep_generate
from tasks.base import Example, Task

from rlgf_cli.training.algorithms import GUIDE, LEARNER, Scheme
from rlgf_cli.training.rollout import RolloutBatch, pad_id
from rlgf_cli.runtime import derive_seed
from rlgf_cli.training.tensors import chunks, concat


def same_vocabulary(a, b) -> bool:
    """Whether two policies share a tokenizer vocabulary (so tokens can be handed over as-is)."""
    if not (isinstance(a, TokenPolicy) and isinstance(b, TokenPolicy)):
        return False
    if a.tokenizer is b.tokenizer:
        return True
    try:
        return a.tokenizer.get_vocab() == b.tokenizer.get_vocab()
    except (AttributeError, NotImplementedError):  # pragma: no cover
        return False


class GuidedRollout:
    """Collects episodes for one scheme with a learner and (optionally) a guide."""

    def __init__(self, learner: TokenPolicy, guide, task: Task, *, max_new_tokens: int,
                 min_new_tokens: int, sampling: Sampling, guide_sampling: Sampling | None = None,
                 lockstep: bool = True) -> None:
        self.learner = learner
        self.guide = guide
        self.task = task
        self.max_new_tokens = max_new_tokens
        self.min_new_tokens = min_new_tokens
        self.sampling = sampling
        self.guide_sampling = guide_sampling or sampling
        self.token_guide = guide is not None and same_vocabulary(learner, guide)
        self.guide_calls = 0
        #: use the lock-step loop where it can run (False: always two passes; for comparisons)
        self.lockstep = lockstep

    # -- public --------------------------------------------------------------------
    @torch.no_grad()
    def collect(self, examples: Sequence[Example], scheme: Scheme, beta: float,
                generator: torch.Generator | None = None, batch_size: int = 32, *,
                chunk_seed: int | None = None, first_index: int = 0) -> RolloutBatch:
        """Episodes for ``examples`` in chunks of ``batch_size``.

        With ``chunk_seed`` every chunk draws its coins, restart points and samples from
        its own seed (``chunk_seed`` + the chunk's global index ``first_index + start``), so
        a batch sharded over data-parallel ranks is generated exactly as in one process.
        Otherwise ``generator`` (and the global torch RNG) are consumed in order.
        """
        if not examples:
            return _empty(self.learner, scheme.name)
        parts = []
        for sl in chunks(len(examples), batch_size):
            gen = generator
            if chunk_seed is not None:
                seed = derive_seed(chunk_seed, first_index + sl.start)
                gen = torch.Generator().manual_seed(seed)
                torch.manual_seed(seed)
            elif gen is None:
                gen = torch.Generator().manual_seed(0)
            parts.append(self._collect_chunk(list(examples[sl]), scheme, beta, gen))
        return concat(parts, pad_id(self.learner))

    # -- one chunk -------------------------------------------------------------------
    def _collect_chunk(self, examples: list[Example], scheme: Scheme, beta: float,
                       generator: torch.Generator) -> RolloutBatch:
        learner = self.learner
        prompts = [ex.prompt for ex in examples]  # what the reward sees
        n = len(prompts)
        query, qmask = learner.encode_prompts(self.task.prompts_for(examples, learner), self.task.prompt_max_tokens)
        query, qmask = query.to(learner.device), qmask.to(learner.device)
        # 1. the β-coin: does this episode switch from the mixed-in policy to the roll-out policy?
        switch = torch.rand(n, generator=generator) < beta
        if scheme.mix_roll_in == scheme.roll_out:
            switch[:] = False
        rows = switch.nonzero().flatten().tolist()
        guide_calls_before = self.guide_calls
        # 2. restart points, roll-in and roll-out
        if self._lockstep(scheme):
            response, rmask, prefix_len = self._lockstep_chunk(scheme, query, qmask, rows, generator)
            prefix_len = prefix_len.cpu()
        else:
            # a text-level guide reads the prompts as its own template renders them (a chat)
            guide_prompts = self.task.prompts_for(examples, self.guide)
            response, rmask, prefix_len = self._two_pass_chunk(scheme, query, qmask, guide_prompts, rows, generator)
        positions = torch.arange(response.shape[1], device=response.device).unsqueeze(0)
        in_prefix = positions < prefix_len.to(response.device).unsqueeze(1)
        roll_in_is_guide = scheme.mix_roll_in == GUIDE
        roll_out_is_guide = scheme.roll_out == GUIDE
        guide_tok = torch.where(in_prefix, roll_in_is_guide, roll_out_is_guide) & rmask.bool()
        learner_tok = rmask.bool() & ~guide_tok
        return RolloutBatch(
            examples=examples,
            prompts=prompts,
            completions=learner.decode(response, rmask),
            query=query,
            query_mask=qmask,
            response=response,
            response_mask=rmask,
            learner_mask=learner_tok.long(),
            guide_mask=guide_tok.long(),
            restart=prefix_len.to(response.device),
            scheme=scheme.name,
            stats={
                "learner_tokens": int(learner_tok.sum()),
                "guide_tokens": int(guide_tok.sum()),
                "guide_calls": self.guide_calls - guide_calls_before,
                "switched_episodes": len(rows),
            },
        )

    # -- the two ways of collecting a chunk -----------------------------------------------
    def _lockstep(self, scheme: Scheme) -> bool:
        """Whether both halves can run in one lock-step decoding loop: local models sharing the
        learner's vocabulary, sampled or greedy (no beam search)."""
        if not self.lockstep or max(self.sampling.num_beams, self.guide_sampling.num_beams) > 1:
            return False
        if not can_step(self.learner):
            return False
        uses_guide = GUIDE in (scheme.roll_out, scheme.mix_roll_in)
        return not uses_guide or (self.token_guide and can_step(self.guide))

    def _lockstep_chunk(self, scheme: Scheme, query, qmask, rows: list[int], generator: torch.Generator):
        """Roll-in and roll-out in one loop (:func:`backends.hf.decode.lockstep_generate`): restart
        points are drawn uniformly over ``{1 … L-1}`` up front and redrawn over ``{1 … m-1}`` for
        roll-ins that end early at ``m`` tokens, which is the same distribution as "uniform over
        ``{1 … m-1}`` of the roll-in's ``m`` tokens"."""
        n, L = query.shape[0], self.max_new_tokens
        restart = torch.zeros(n, dtype=torch.long)
        if rows:
            low = 1 if L >= 2 else 0
            restart[rows] = torch.randint(low, max(L, 1), (len(rows),), generator=generator)
        policy = {LEARNER: self.learner, GUIDE: self.guide}
        roll_in = policy[scheme.mix_roll_in] if rows else None
        sampling = {LEARNER: self.sampling, GUIDE: self.guide_sampling}
        if scheme.mix_roll_in == GUIDE:
            self.guide_calls += int((restart > 0).sum())
        if scheme.roll_out == GUIDE:
            self.guide_calls += n
        return lockstep_generate(policy[scheme.roll_out], query, qmask, max_new_tokens=L,
                                 min_new_tokens=self.min_new_tokens, sampling=sampling[scheme.roll_out],
                                 roll_in=roll_in, restart=restart, roll_in_sampling=sampling[scheme.mix_roll_in],
                                 generator=generator)

    def _two_pass_chunk(self, scheme: Scheme, query, qmask, prompts: list[str], rows: list[int],
                        generator: torch.Generator):
        """The roll-in first (any guide, text hand-off included), then the roll-out from the
        prefix, prefilled in one pass."""
        learner = self.learner
        n, L = len(prompts), self.max_new_tokens
        fixed_length = self.min_new_tokens >= L
        prefix = torch.full((n, 1), pad_id(learner), dtype=torch.long, device=learner.device)
        prefix_len = torch.zeros(n, dtype=torch.long)
        if rows:
            # with a fixed continuation length k is drawn before the roll-in,
            # which then only needs max(k) steps
            if fixed_length:
                ks = torch.randint(1 if L >= 2 else 0, max(L, 1), (len(rows),), generator=generator)
                roll_in_len = int(ks.max())
            else:
                ks, roll_in_len = None, L
            if roll_in_len > 0:
                tokens, tmask = self._roll_in(scheme.mix_roll_in, query[rows], qmask[rows], [prompts[i] for i in rows],
                                              roll_in_len)
                lengths = tmask.sum(1).cpu()
                if ks is None:  # k uniform over {1, …, m-1} of the generated length m (0 where m ≤ 1)
                    u = torch.rand(len(rows), generator=generator)
                    low = (lengths >= 2).long()
                    ks = low + (u * (lengths - low).clamp(min=1).float()).long()
                ks = torch.minimum(ks, lengths)
                width = max(int(ks.max()), 1)
                prefix = torch.full((n, width), pad_id(learner), dtype=torch.long, device=learner.device)
                for j, i in enumerate(rows):
                    k = int(ks[j])
                    prefix[i, :k] = tokens[j, :k]
                    prefix_len[i] = k
        pmask = (torch.arange(prefix.shape[1]).unsqueeze(0) < prefix_len.unsqueeze(1)).long().to(learner.device)
        # the roll-out policy completes every episode (prefix of length 0 where there was no switch)
        response, rmask = self._roll_out(scheme.roll_out, query, qmask, prompts, prefix, pmask)
        return response, rmask, prefix_len

    # -- the two halves ----------------------------------------------------------------
    def _roll_in(self, who: str, query, qmask, prompts: list[str], steps: int):
        """Generate ``steps`` roll-in tokens (learner tokens) for the given rows."""
        if who == LEARNER or self.token_guide:
            policy = self.learner if who == LEARNER else self.guide
            if who == GUIDE:
                self.guide_calls += len(prompts)
            return policy.generate(query, qmask, max_new_tokens=steps, min_new_tokens=min(self.min_new_tokens, steps),
                                   sampling=self.sampling if who == LEARNER else self.guide_sampling)
        texts = self._guide_text(prompts, steps)
        return self.learner.encode_responses(texts, steps)

    def _roll_out(self, who: str, query, qmask, prompts: list[str], prefix, pmask):
        L = self.max_new_tokens
        if who == LEARNER or self.token_guide:
            policy = self.learner if who == LEARNER else self.guide
            if who == GUIDE:
                self.guide_calls += len(prompts)
            return policy.generate(query, qmask, max_new_tokens=L, min_new_tokens=self.min_new_tokens,
                                   sampling=self.sampling if who == LEARNER else self.guide_sampling,
                                   prefix=prefix, prefix_mask=pmask)
        # text-level hand-off: the guide continues prompt + decoded learner prefix
        lengths = pmask.sum(1).tolist()
        prefix_texts = self.learner.decode(prefix, pmask)
        rows = []
        # group by remaining length so each request asks for the right number of tokens
        by_room: dict[int, list[int]] = {}
        for i, k in enumerate(lengths):
            by_room.setdefault(L - int(k), []).append(i)
        continuations: list[str] = [""] * len(prompts)
        for room, idx in by_room.items():
            if room <= 0:
                continue
            self.guide_calls += len(idx)
            texts = self.guide.continue_from([prompts[i] for i in idx], [prefix_texts[i] for i in idx],
                                             max_new_tokens=room, min_new_tokens=min(self.min_new_tokens, room),
                                             sampling=self.guide_sampling)
            for i, t in zip(idx, texts):
                continuations[i] = t
        cont, cmask = self.learner.encode_responses(continuations, L)
        for i, k in enumerate(lengths):
            k = int(k)
            c = cont[i][cmask[i].bool()].tolist()[: L - k]
            rows.append(prefix[i, :k].tolist() + c)
        pid = pad_id(self.learner)
        width = max(max((len(r) for r in rows), default=1), 1)
        response = torch.full((len(rows), width), pid, dtype=torch.long, device=self.learner.device)
        rmask = torch.zeros_like(response)
        for i, r in enumerate(rows):
            response[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            rmask[i, : len(r)] = 1
        return response, rmask

    def _guide_text(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        self.guide_calls += len(prompts)
        return self.guide.complete(prompts, max_new_tokens=max_new_tokens,
                                   min_new_tokens=min(self.min_new_tokens, max_new_tokens),
                                   sampling=self.guide_sampling)


def _empty(learner: TokenPolicy, name: str) -> RolloutBatch:
    none = torch.zeros((0, 1), dtype=torch.long, device=learner.device)
    return RolloutBatch(examples=[], prompts=[], completions=[], query=none, query_mask=none, response=none,
                        response_mask=none, learner_mask=none, guide_mask=none, restart=none[:, 0], scheme=name,
                        stats={"learner_tokens": 0, "guide_tokens": 0, "guide_calls": 0, "switched_episodes": 0})

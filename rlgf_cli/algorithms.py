"""The algorithms of the paper as data: which rollout scheme runs in which iteration.

Every algorithm is one PPO update fed by a rollout *scheme* (DESIGN.md):

=============  ===========================================  ==========  ==========
scheme         roll-in (per episode, coin with prob. β)     roll-out    critic
=============  ===========================================  ==========  ==========
ppo            learner                                      learner     learner
ppo++          guide with prob. β, else learner             learner     learner
aggrevated     learner with prob. β, else guide             guide       guide
=============  ===========================================  ==========  ==========

LOLS collects a PPO++ and an AggreVaTeD batch each iteration and mixes their advantages
α·A^{π_θ} + (1−α)·A^{π_g}; D2LOLS runs AggreVaTeD for the first ⌈α·T⌉ iterations, then PPO++.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

LEARNER, GUIDE = "learner", "guide"


@dataclass(frozen=True)
class Scheme:
    name: str
    #: who completes the episode after the restart point k
    roll_out: str
    #: who rolls in when the episode's β-coin comes up (otherwise the roll-out policy does it all)
    mix_roll_in: str
    #: whose value function gives the advantages (and is trained on its own tokens)
    critic: str
    #: paper default for β (Table 6)
    default_beta: float

    @property
    def needs_guide(self) -> bool:
        return GUIDE in (self.roll_out, self.mix_roll_in)


PPO = Scheme("ppo", roll_out=LEARNER, mix_roll_in=LEARNER, critic=LEARNER, default_beta=0.0)
PPO_PP = Scheme("ppo++", roll_out=LEARNER, mix_roll_in=GUIDE, critic=LEARNER, default_beta=0.2)
AGGREVATED = Scheme("aggrevated", roll_out=GUIDE, mix_roll_in=LEARNER, critic=GUIDE, default_beta=0.8)


@dataclass(frozen=True)
class Part:
    """One batch of an iteration: its scheme, β, the advantage weight and share of the episodes."""

    scheme: Scheme
    beta: float
    weight: float = 1.0
    share: float = 1.0


GUIDED = ("ppo++", "aggrevated", "lols", "d2lols")


def needs_guide(alg: str) -> bool:
    return alg in GUIDED


def needs_guide_critic(alg: str) -> bool:
    return alg in ("aggrevated", "lols", "d2lols")


def d2lols_switch(alpha: float, iterations: int) -> int:
    """D2LOLS runs AggreVaTeD for iterations ``0 … switch-1`` (``switch = ⌈α·T⌉``)."""
    return math.ceil(alpha * iterations - 1e-9)


def plan(alg: str, iteration: int, iterations: int, *, alpha: float, beta: float | None) -> list[Part]:
    """The batches to collect in (0-based) ``iteration`` of ``iterations``."""

    def part(scheme: Scheme, weight: float = 1.0, share: float = 1.0) -> Part:
        return Part(scheme, scheme.default_beta if beta is None else beta, weight, share)

    if alg == "ppo":
        return [part(PPO)]
    if alg == "ppo++":
        return [part(PPO_PP)]
    if alg == "aggrevated":
        return [part(AGGREVATED)]
    if alg == "lols":
        return [part(PPO_PP, alpha, 0.5), part(AGGREVATED, 1.0 - alpha, 0.5)]
    if alg == "d2lols":
        return [part(AGGREVATED if iteration < d2lols_switch(alpha, iterations) else PPO_PP)]
    raise ValueError(f"no rollout plan for algorithm {alg!r}")

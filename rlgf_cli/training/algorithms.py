"""The algorithms of the paper as data: one :class:`Algorithm` record per ``--alg``.

Every algorithm is one PPO update fed by a rollout *scheme* (DESIGN.md):

=============  ===========================================  ==========  ==========
scheme         roll-in (per episode, coin with prob. β)     roll-out    critic
=============  ===========================================  ==========  ==========
ppo            learner                                      learner     learner
ppo++          guide with prob. β, else learner             learner     learner
aggrevated     learner with prob. β, else guide             guide       guide
=============  ===========================================  ==========  ==========

LOLS collects a PPO++ and an AggreVaTeD batch each iteration and mixes their policy
losses α·L(A^{π_θ}) + (1−α)·L(A^{π_g}) (paper Alg. 4), each normalised over its own learner
tokens; D2LOLS runs AggreVaTeD for the first ⌈α·T⌉ iterations, then PPO++ (α is a mixing
*time*: Tables 5/6 give 20 of T = 100).

This module is the only place an algorithm is named: the config, the CLI, the trainer and
the run loop all read the record (:func:`get`). A new algorithm is one :func:`register` call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from backends.errors import RlgfError

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
    #: paper default for β (Table 6): PPO++ 0.2 (guide rolls in), AggreVaTeD 0.8 (learner rolls in)
    default_beta: float

    @property
    def needs_guide(self) -> bool:
        return GUIDE in (self.roll_out, self.mix_roll_in)


PPO = Scheme("ppo", roll_out=LEARNER, mix_roll_in=LEARNER, critic=LEARNER, default_beta=0.0)
PPO_PP = Scheme("ppo++", roll_out=LEARNER, mix_roll_in=GUIDE, critic=LEARNER, default_beta=0.2)
AGGREVATED = Scheme("aggrevated", roll_out=GUIDE, mix_roll_in=LEARNER, critic=GUIDE, default_beta=0.8)
SCHEMES = {s.name: s for s in (PPO, PPO_PP, AGGREVATED)}


@dataclass(frozen=True)
class Part:
    """One batch of an iteration: its scheme, β, the policy-loss weight and share of the episodes."""

    scheme: Scheme
    beta: float
    weight: float = 1.0
    share: float = 1.0


@dataclass(frozen=True)
class PlanContext:
    """What a plan may depend on: the (0-based) iteration, the run's length and settings."""

    iteration: int
    iterations: int
    alpha: float
    #: β per scheme name (the run's resolved values)
    betas: dict
    #: D2LOLS-style switch iteration fixed when the run started (None: not used)
    switch: int | None = None

    def part(self, scheme: Scheme, weight: float = 1.0, share: float = 1.0) -> Part:
        return Part(scheme, self.betas.get(scheme.name, scheme.default_beta), weight, share)


@dataclass(frozen=True)
class Algorithm:
    """Everything rlgf knows about one ``--alg``."""

    name: str
    summary: str
    #: the batches of one iteration; None for supervised trainers (BC)
    plan: Callable[[PlanContext], list[Part]] | None
    aliases: tuple[str, ...] = ()
    needs_guide: bool = False
    needs_guide_critic: bool = False
    #: "ppo" (the RL trainer) or "bc" (supervised on the task's references)
    trainer: str = "ppo"
    #: default learning rate (paper Table 5: 1e-6 for RL on IMDB; BC 1e-5)
    default_lr: float = 1e-6
    #: default α (None: the algorithm has no α)
    default_alpha: float | None = None
    #: the schemes whose β this algorithm uses (several: `--beta` is ambiguous and refused)
    beta_schemes: tuple[str, ...] = ()
    #: α is a switch *time*: the switch iteration ⌈α·T⌉ is fixed when the run starts
    switches: bool = False

    def context(self, iteration: int, iterations: int, *, alpha: float | None, betas: dict,
                switch: int | None = None) -> PlanContext:
        a = self.default_alpha if alpha is None else alpha
        return PlanContext(iteration, iterations, 0.0 if a is None else a, betas, switch)


_REGISTRY: dict[str, Algorithm] = {}


def register(alg: Algorithm) -> Algorithm:
    """Add (or replace) an algorithm; its name and aliases become valid ``--alg`` values."""
    _REGISTRY[alg.name] = alg
    return alg


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def names() -> list[str]:
    return list(_REGISTRY)


def aliases() -> dict[str, str]:
    return {alias: a.name for a in _REGISTRY.values() for alias in a.aliases}


def get(name: str) -> Algorithm:
    """The record for an algorithm name or alias (case-insensitive); an unknown name is an
    :class:`RlgfError` with a "did you mean" suggestion."""
    key = name.strip().lower()
    key = aliases().get(key, key)
    if key in _REGISTRY:
        return _REGISTRY[key]
    from backends.errors import did_you_mean

    hint = did_you_mean(key, names() + list(aliases()), n=1)
    raise RlgfError(f"unknown algorithm '{name}'", f"{hint}choose one of: {', '.join(names())}")


def switch_iteration(alpha: float, iterations: int) -> int:
    """D2LOLS runs AggreVaTeD for iterations ``0 … switch-1`` (``switch = ⌈α·T⌉``)."""
    return math.ceil(alpha * iterations - 1e-9)


# -- the paper's algorithms -------------------------------------------------------------
def _d2lols(ctx: PlanContext) -> list[Part]:
    switch = ctx.switch if ctx.switch is not None else switch_iteration(ctx.alpha, ctx.iterations)
    return [ctx.part(AGGREVATED if ctx.iteration < switch else PPO_PP)]


register(Algorithm("ppo", "PPO: the learner rolls in and out; learner critic", lambda ctx: [ctx.part(PPO)]))
register(Algorithm("ppo++", "PPO++: the guide rolls in with prob. β, the learner rolls out",
                   lambda ctx: [ctx.part(PPO_PP)], aliases=("ppopp", "ppo_pp", "pp"), needs_guide=True,
                   beta_schemes=("ppo++",)))
register(Algorithm("aggrevated", "AggreVaTeD: the learner rolls in with prob. β, the guide rolls out; guide critic",
                   lambda ctx: [ctx.part(AGGREVATED)], aliases=("aggrevate",), needs_guide=True,
                   needs_guide_critic=True, beta_schemes=("aggrevated",)))
register(Algorithm("lols", "LOLS: a PPO++ and an AggreVaTeD batch each iteration, losses mixed α : 1−α",
                   lambda ctx: [ctx.part(PPO_PP, ctx.alpha, 0.5), ctx.part(AGGREVATED, 1.0 - ctx.alpha, 0.5)],
                   needs_guide=True, needs_guide_critic=True, default_alpha=0.8,
                   beta_schemes=("ppo++", "aggrevated")))
register(Algorithm("d2lols", "D2LOLS: AggreVaTeD for the first ⌈α·T⌉ iterations, then PPO++", _d2lols,
                   needs_guide=True, needs_guide_critic=True, default_alpha=0.2,
                   beta_schemes=("ppo++", "aggrevated"), switches=True))
register(Algorithm("bc", "BC: supervised fine-tuning on the task's references", None, trainer="bc",
                   default_lr=1e-5))

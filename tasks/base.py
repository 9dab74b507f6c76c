"""What every task provides: data splits, prompts, a reward and metrics.

A task knows nothing about the CLI or the trainer. Metrics that need a policy (the
perplexity of the policy on the references) receive the policy as an argument.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Sequence

from backends.base import Sampling

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Example:
    """One prompt with its reference text(s).

    ``references`` holds every acceptable reference; for the sentiment tasks it is the
    whole original text (prompt included), for CommonGen the target sentences.
    ``target`` is what supervised (BC) training should produce after the prompt.
    """

    prompt: str
    references: tuple[str, ...]
    target: str = ""
    label: int | None = None
    meta: dict = field(default_factory=dict, compare=False, hash=False)


class Task:
    """Base class for tasks. Subclasses set the class attributes and the methods below."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    data_source: ClassVar[str] = ""
    default_learner: ClassVar[str] = ""
    reward_name: ClassVar[str] = ""
    metric_names: ClassVar[tuple[str, ...]] = ()
    #: the task's own ``rlgf train`` defaults for RL algorithms (TrainConfig field → value);
    #: the paper's Tables 5 and 6 for its tasks. Flags and config files override them.
    train_defaults: ClassVar[dict] = {}

    #: prompt length cap in learner tokens (left truncation), and continuation length
    prompt_max_tokens: int = 64
    max_new_tokens: int = 24
    min_new_tokens: int = 24
    train_sampling: Sampling = Sampling(do_sample=True, top_k=50)
    eval_sampling: Sampling = Sampling(do_sample=True, top_k=50)

    def examples(self, split: str) -> list[Example]:
        """The examples of ``split`` (one of :data:`SPLITS`), in a fixed order."""
        raise NotImplementedError

    def bc_examples(self) -> list[Example]:
        """Supervised data for BC: prompts with the target continuation to imitate."""
        raise NotImplementedError

    def reward(
        self, prompts: Sequence[str], completions: Sequence[str], examples: Sequence[Example]
    ) -> list[float]:
        """One scalar reward per completed episode."""
        raise NotImplementedError

    def metrics(self, prompts, completions, examples, policy=None, reference_policy=None) -> dict:
        """Evaluation metrics for a batch of completions (see :attr:`metric_names`)."""
        raise NotImplementedError

    def prepare(self, progress=None) -> None:
        """Do the expensive setup ahead of use (load data, train or load a reward model).

        Optional: tasks do this lazily on first use anyway. ``progress`` is an optional
        ``callback(message, fraction)`` (``fraction`` in [0, 1], or ``None`` if unknown).
        """

    def check_reward(self) -> None:
        """Raise :class:`~backends.errors.RlgfError` now if :meth:`reward` cannot run here
        (e.g. a default reward whose scorer is not installed). Optional: tasks without such
        a case need not override it; RL training should call it before a run starts."""

    def info(self) -> dict:
        """Facts worth showing with results (e.g. the reward classifier's accuracy)."""
        return {}

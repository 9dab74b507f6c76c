"""What every task provides: data splits, prompts, a reward and metrics.

A task knows nothing about the CLI or the trainer. Metrics that need a policy (the
perplexity of the policy on the references) receive the policy as an argument.

A task with one part swapped (its reward, :meth:`Task.with_reward`; its BC data…) is a real
instance of the task's own class, made by :func:`layered`: a copy whose class puts a small
*layer* class, overriding just that part, in front of the task's class.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, ClassVar, Self, Sequence, TypeVar

from backends.base import Sampling
from backends.errors import RlgfError

if TYPE_CHECKING:
    from tasks.custom_reward import CustomReward

SPLITS = ("train", "val", "test")
#: the sampling options every task takes (``rlgf train --temperature/--top-k/--top-p``)
SAMPLING_OPTIONS = ("temperature", "top_k", "top_p")


def check_sampling(temperature: float, top_k: int, top_p: float, *, what: str = "sampling") -> None:
    """Raise :class:`RlgfError` for sampling settings no decoder can use (``what``: whose, in the message)."""
    wrong = [f"{name} {value}" for name, value, ok in (
        ("temperature", temperature, 0 < float(temperature) <= 2), ("top-k", top_k, int(top_k) >= 0),
        ("top-p", top_p, 0 < float(top_p) <= 1)) if not ok]
    if wrong:  # only what is wrong: the others may be defaults the user never set
        raise RlgfError(f"{what} out of range: {', '.join(wrong)}",
                        "use a temperature in (0, 2], a top-k >= 0 (0: off) and a top-p in (0, 1]")


def sampled_at(base: Sampling, *, temperature: float | None = None, top_k: int | None = None,
               top_p: float | None = None, what: str = "sampling") -> Sampling:
    """``base`` sampled (never greedy or beam search) at these settings; None keeps ``base``'s."""
    sampling = replace(base, do_sample=True, num_beams=1,
                       temperature=float(base.temperature if temperature is None else temperature),
                       top_k=int(base.top_k if top_k is None else top_k),
                       top_p=float(base.top_p if top_p is None else top_p))
    check_sampling(sampling.temperature, sampling.top_k, sampling.top_p, what=what)
    return sampling


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


@dataclass(frozen=True)
class PromptDifficulty:
    """How hard each prompt is to complete well, judged from the prompt alone: what
    :meth:`Task.prompt_difficulty` returns and ``rlgf difficulty`` (paper §6) buckets by.

    ``values`` holds one number per example, in order; ``kind`` says how to read and cut them:

    * ``"score"`` — higher is easier (e.g. a classifier's P(positive) of the prompt): cut into
      terciles (``hard`` / ``medium`` / ``easy``), or at the user's ``--thresholds``;
    * ``"level"`` — higher is harder (e.g. a ``difficulty`` column of your prompts file): cut
      into terciles too, the highest third ``hard``, or at ``--thresholds`` in its own units;
    * ``"count"`` — a count of obstacles, more is harder (e.g. concepts never seen in
      training): ``hard`` with at least N (``--unseen-at-least``, default 1), else ``easy``.

    ``method`` names the measure in reports; ``description`` says it in words (for a count,
    ``{n}`` in it stands for N).
    """

    values: tuple[float, ...]
    kind: str
    method: str
    description: str

    KINDS: ClassVar[tuple[str, ...]] = ("score", "level", "count")

    def __post_init__(self) -> None:
        if self.kind not in self.KINDS:
            raise ValueError(f"PromptDifficulty.kind must be one of {self.KINDS}, not {self.kind!r}")
        object.__setattr__(self, "values", tuple(float(v) for v in self.values))


#: ``rlgf train`` defaults sized for a CPU and SmolLM2-135M, the learner of the embedded default and of
#: ``--task prompts``: 10 iterations of 32 episodes, 2 epochs (minibatches of 16), lr 5e-5 — the learning
#: rate the reproduction chose on rotten-tomatoes' validation split (bench/results/rotten-tomatoes-cpu).
#: An iteration of the embedded default takes 13–80 s on 2 cores (bf16 / fp32).
CPU_SIZED_DEFAULTS = {"iterations": 10, "episodes": 32, "epochs": 2, "lr": 5e-5}

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
    #: an ``openai-chat:`` guide's system message and roll-in instruction (``{prompt}`` marks the
    #: prompt) for this task; None: the backend's generic "continue this text" ones
    guide_system: str | None = None
    guide_instruction: str | None = None
    #: the ``module:function`` reward training uses instead of the task's own, if any
    custom_reward: CustomReward | None = None
    #: the task's scoring methods ``(prompts, completions) -> list[float]`` that an evaluation may
    #: call more than once for the same generations (the sentiment tasks' classifier, behind both
    #: their reward and their ``sentiment`` metric); ``rlgf eval`` remembers them with the reward
    scored_once: ClassVar[tuple[str, ...]] = ()
    #: the run's :class:`~backends.precision.Precision` (None: float32), for the task's frozen scorers
    precision = None

    def use_precision(self, precision) -> None:
        """Run the task's frozen scoring models (a reward classifier) at ``precision``: bf16
        weights and autocast under bf16. Tasks with such models apply it in :meth:`apply_precision`."""
        self.precision = precision
        self.apply_precision()

    def apply_precision(self) -> None:
        """Give the loaded scoring models :attr:`precision` (nothing to do by default)."""

    def prompts_for(self, examples: Sequence[Example], policy=None) -> list[str]:
        """The prompt texts ``policy`` reads for ``examples``: the examples' own prompts, or
        (``--task prompts``) a chat rendered with the policy's template. Rewards and metrics
        keep seeing the examples' plain ``prompt``."""
        return [ex.prompt for ex in examples]

    def examples(self, split: str) -> list[Example]:
        """The examples of ``split`` (one of :data:`SPLITS`), in a fixed order."""
        raise NotImplementedError

    def bc_examples(self) -> list[Example]:
        """Supervised data for BC: prompts with the target continuation to imitate."""
        raise NotImplementedError

    def reward(
        self, prompts: Sequence[str], completions: Sequence[str], examples: Sequence[Example]
    ) -> list[float]:
        """One scalar reward per completed episode.

        :meth:`with_reward` replaces it, so :meth:`metrics` should score with the task's own
        scorer, not through ``self.reward``: the metrics then stay the task's own."""
        raise NotImplementedError

    def with_reward(self, reward: CustomReward | str) -> Self:
        """A copy of this task whose :meth:`reward` is ``reward`` (a
        :class:`~tasks.custom_reward.CustomReward` or its ``module:function`` spec); data, prompts,
        decoding, metrics and facts stay this task's. The copy is an instance of this task's
        class (and of :class:`~tasks.custom_reward.CustomRewardTask`)."""
        from tasks.custom_reward import CustomReward, CustomRewardTask

        if not isinstance(reward, CustomReward):
            reward = CustomReward(reward)
        return layered(self, CustomRewardTask, custom_reward=reward)

    def with_sampling(self, *, temperature: float | None = None, top_k: int | None = None,
                      top_p: float | None = None) -> Self:
        """This task with its training roll-outs sampled at these settings (None keeps the
        task's own); its evaluation decoding stays the task's (``rlgf eval`` has its own flags)."""
        self.train_sampling = sampled_at(self.train_sampling, temperature=temperature, top_k=top_k, top_p=top_p)
        return self

    def metrics(self, prompts, completions, examples, policy=None, reference_policy=None) -> dict:
        """Evaluation metrics for a batch of completions (see :attr:`metric_names`)."""
        raise NotImplementedError

    def prompt_difficulty(self, examples: Sequence[Example]) -> PromptDifficulty:
        """How hard each of ``examples`` is for a policy, from its prompt alone (see
        :class:`PromptDifficulty`); ``rlgf difficulty`` buckets prompts by it. Optional: a task
        without such a measure keeps this default, which refuses with an :class:`RlgfError`."""
        raise RlgfError(
            f"task {self.name} has no measure of prompt difficulty",
            hint="rlgf difficulty needs a task that defines prompt_difficulty() (e.g. rotten-tomatoes, imdb, commongen, prompts)",
        )

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


T = TypeVar("T", bound=Task)


def layered(task: T, layer: type[Task], **attributes) -> T:
    """A shallow copy of ``task`` whose class is ``layer`` in front of the task's own class,
    with ``attributes`` set on it: an instance of both, where ``layer``'s methods win and
    everything else (and ``super()`` from ``layer``) is the task's.

    ``layer`` is a :class:`Task` subclass that overrides a few methods and defines no
    ``__init__``. The original ``task`` is left as it was; the copy shares its loaded data
    and models. Layering a task that already has ``layer`` keeps its class.
    """
    base = type(task)
    new = copy.copy(task)
    new.__class__ = base if issubclass(base, layer) else _layered_class(base, layer)
    for name, value in attributes.items():
        setattr(new, name, value)
    return new


@functools.cache
def _layered_class(base: type[Task], layer: type[Task]) -> type[Task]:
    name = f"{base.__name__}With{layer.__name__.removesuffix('Task')}"
    return type(name, (layer, base), {"__module__": layer.__module__, "__qualname__": name, "__doc__": layer.__doc__})

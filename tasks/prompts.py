"""``--task prompts``: your own prompts, with the reward you bring.

``--data FILE`` is JSON lines (``.jsonl``/``.json``; a ``.json`` file may also hold one JSON
array of rows), CSV (``.csv``; comma, tab or semicolon separated, with a header line) or TSV
(``.tsv``), Parquet (``.parquet``), plain text (``.txt``: one prompt per line), a folder written
by ``datasets``' ``save_to_disk``, or ``hf:NAME[:SPLIT]`` for a Hugging Face dataset (a hub
name, online or in the local datasets cache, or a local dataset folder). Each row has a
``prompt`` (text; another column with ``--prompt-field``) or ``messages`` (a chat: a list of ``{"role", "content"}``
turns, rendered with each model's chat template — see :mod:`tasks.chat` and
``--chat-template``), optionally a ``reference`` (text) or ``references`` (a list of texts;
another column with ``--reference-field``) and a ``split`` (``train``, ``val`` or ``test``).
Without a split column the rows are split 80/10/10 with a seeded shuffle, as the built-in
tasks are (a dataset's own train/validation/test splits are kept).

The task has no reward of its own: training needs one of yours, one of three kinds —
``--reward module:function`` (or ``path/to/file.py:function``; see :mod:`tasks.custom_reward`),
``--reward-model DIR`` (any sequence-classification folder, ``--reward-label`` picks the class;
:mod:`tasks.scoring.model_reward`) or ``--reward-url URL`` (a service of yours;
:mod:`tasks.scoring.http_reward`). Its metrics are the mean ``reward`` (when there is one),
``length`` (mean words per completion), ``perplexity`` of the references under the policy,
``bleu4`` and ``rouge_l`` (pycocoevalcap, as CommonGen's, on PTB-tokenized text) when the rows
have references, and ``output_perplexity`` of the completions under the reference model. BC
clones the first reference of each train row.

``rlgf difficulty`` buckets the prompts by a numeric ``difficulty`` column when the rows have
one (higher is harder), else by the reward of each prompt with an empty completion (higher is
easier, as the sentiment tasks' classifier score of the prompt alone).
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any, Iterator

from backends.base import Sampling
from backends.errors import RlgfError
from tasks.base import CPU_SIZED_DEFAULTS, SPLITS, Example, PromptDifficulty, Task, check_sampling
from tasks.scoring.perplexity import can_score, corpus_perplexity
from tasks.table_rows import csv_rows, is_saved_dataset, json_array_rows, not_utf8, parquet_rows, place, starts_json_array

FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "csv",
           ".parquet": "parquet", ".txt": "text"}
SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                 "dev": "val", "test": "test"}


class PromptsTask(Task):
    """Prompts from a file of yours; the reward is a function of yours."""

    name = "prompts"
    description = "Your own prompts from a JSONL, CSV, Parquet or text file (--data), with your reward (--reward)"
    data_source = "--data FILE: rows with a prompt, optionally reference(s), a split and a difficulty"
    default_learner = "smollm2"
    #: the embedded default's (same learner): the paper's lr 1e-6 and 5 epochs barely move a model in
    #: the few iterations a first run of one's own task takes
    train_defaults = CPU_SIZED_DEFAULTS
    reward_name = "yours: --reward module:function, --reward-model DIR or --reward-url URL (one is needed to train)"
    metric_names = ("length", "bleu4", "rouge_l", "perplexity", "output_perplexity")
    train_sampling = Sampling(do_sample=True, top_k=50)
    eval_sampling = Sampling(do_sample=True, top_k=50)

    def __init__(self, *, data: str | Path | None = None, prompt_field: str = "prompt",
                 reference_field: str | None = None, reward: str | None = None, reward_model: str | None = None,
                 reward_label: str | None = None, reward_url: str | None = None, seed: int = 42,
                 max_new_tokens: int = 48, min_new_tokens: int = 1, prompt_max_tokens: int = 256,
                 chat_template: str = "auto", temperature: float = 1.0, top_k: int = 50, top_p: float = 1.0,
                 device: str | None = None) -> None:
        from tasks.chat import ChatPrompts

        if data is None:
            raise RlgfError("--task prompts needs --data FILE",
                            "a JSON lines, CSV or Parquet file (or hf:NAME[:SPLIT]) whose rows have a 'prompt' "
                            "or 'messages' (see `rlgf tasks`)")
        self.chat = ChatPrompts(chat_template)
        if int(max_new_tokens) < 1:
            raise RlgfError(f"max_new_tokens must be at least 1, not {max_new_tokens}", "e.g. --max-new-tokens 48")
        if not 0 <= int(min_new_tokens) <= int(max_new_tokens):
            raise RlgfError(f"--min-new-tokens must be between 0 and --max-new-tokens ({max_new_tokens}), "
                            f"not {min_new_tokens}", "lower --min-new-tokens or raise --max-new-tokens")
        check_sampling(temperature, top_k, top_p)
        self.train_sampling = self.eval_sampling = Sampling(do_sample=True, temperature=float(temperature),
                                                            top_k=int(top_k), top_p=float(top_p))
        self.path = Path(data).expanduser() if not str(data).startswith(HF_PREFIX) else str(data)
        self.prompt_field = str(prompt_field)
        self.reference_field = reference_field
        self.seed = int(seed)
        self.max_new_tokens = int(max_new_tokens)
        self.min_new_tokens = int(min_new_tokens)
        self.prompt_max_tokens = int(prompt_max_tokens)
        self.device = device
        self._splits: dict[str, list[Example]] | None = None
        self._unsplit = 0  # rows without a split column (set with _splits)
        given = [(flag, v) for flag, v in (("--reward", reward), ("--reward-model", reward_model),
                                          ("--reward-url", reward_url)) if v]
        if len(given) > 1:
            raise RlgfError(f"{' and '.join(f for f, _ in given)} were both given; --task prompts takes one reward",
                            "keep one of --reward, --reward-model, --reward-url")
        if reward_label is not None and not reward_model:
            raise RlgfError("--reward-label picks a class of --reward-model, which was not given")
        self.reward_spec = given[0] if given else None
        self._reward_label = reward_label
        self._scorer = None
        if reward:
            from tasks.custom_reward import CustomReward, is_custom_spec

            if not is_custom_spec(reward):
                raise RlgfError(f"--reward {reward!r} is not module:function",
                                "pass your function as module:function or path/to/file.py:function")
            custom = CustomReward(reward)
            self._scorer = custom.for_examples
        if self.reward_spec is not None:
            self.metric_names = ("reward", *self.metric_names)

    # -- data -------------------------------------------------------------------
    def splits(self) -> dict[str, list[Example]]:
        if self._splits is None:
            self._splits, self._unsplit = split_rows(list(read_rows(self.path)), self.path,
                                                     prompt_field=self.prompt_field,
                                                     reference_field=self.reference_field, seed=self.seed)
        return self._splits

    def examples(self, split: str) -> list[Example]:
        if split not in SPLITS:
            raise RlgfError(f"unknown split {split!r}", hint=f"use one of {', '.join(SPLITS)}")
        splits = self.splits()
        if not splits[split]:
            counts = ", ".join(f"{k} {len(v)}" for k, v in splits.items())
            hint = (f"give some rows \"split\": \"{split}\" (under {MIN_SPLIT_ROWS} rows without a split are all "
                    "train rows)" if 0 < self._unsplit < MIN_SPLIT_ROWS else
                    f"give some rows \"split\": \"{split}\", or leave the split column out for a seeded 80/10/10 split")
            raise RlgfError(f"{self.path} has no {split} rows ({counts})", hint)
        return splits[split]

    def prompts_for(self, examples, policy=None) -> list[str]:
        return self.chat.texts(examples, policy)

    def bc_examples(self) -> list[Example]:
        rows = [ex for ex in self.examples("train") if ex.target]
        if not rows:
            raise RlgfError(f"{self.path}: no train row has a reference to clone",
                            "give rows a 'reference' (or --reference-field) for --alg bc")
        return rows

    def prepare(self, progress=None) -> None:
        self.splits()
        self._reward_scorer()

    def _reward_scorer(self):
        """The reward callable ``(prompts, completions, examples)``, loaded on first use."""
        if self._scorer is None and self.reward_spec is not None:
            flag, value = self.reward_spec
            if flag == "--reward-model":
                from tasks.scoring.model_reward import ModelReward

                self._scorer = ModelReward(value, label=self._reward_label, device=self.device)
            else:
                from tasks.scoring.http_reward import HttpReward

                self._scorer = HttpReward(value)
            self.apply_precision()
        return self._scorer

    def apply_precision(self) -> None:
        if self.precision is not None and hasattr(self._scorer, "use_precision"):
            self._scorer.use_precision(self.precision)

    # -- reward and metrics -------------------------------------------------------
    def reward(self, prompts, completions, examples) -> list[float]:
        scorer = self._reward_scorer()
        if scorer is None:
            raise RlgfError("--task prompts has no reward of its own",
                            "pass --reward module:function, --reward-model DIR or --reward-url URL")
        values = scorer(list(prompts), list(completions), list(examples))
        if len(values) != len(completions):
            raise RlgfError(f"the reward returned {len(values)} values for {len(completions)} completions")
        return [float(v) for v in values]

    def prompt_difficulty(self, examples) -> PromptDifficulty:
        """The rows' own ``difficulty`` (higher is harder), else the reward of the prompt alone."""
        given = [ex.meta.get(DIFFICULTY_FIELD) for ex in examples]
        if any(v is not None for v in given):
            missing = next(ex for ex, v in zip(examples, given) if v is None) if None in given else None
            if missing is not None:
                raise RlgfError(f"{place(self.path, missing.meta['line'])}: no '{DIFFICULTY_FIELD}', while other "
                                "rows have one", f"give every row a number in '{DIFFICULTY_FIELD}', or no row")
            levels = [_number(v, self.path, ex.meta["line"]) for ex, v in zip(examples, given)]
            if len(set(levels)) == 1:
                raise RlgfError(f"every prompt has '{DIFFICULTY_FIELD}' {levels[0]:g}, so it cannot rank them",
                                "give the rows different difficulties (higher is harder)")
            return PromptDifficulty(tuple(levels), "level", "difficulty_column",
                                    f"the rows' '{DIFFICULTY_FIELD}' column; higher is harder")
        if self.reward_spec is None:
            raise RlgfError("--task prompts rates a prompt's difficulty by a 'difficulty' column of the rows or by "
                            "the reward of the prompt alone, and has neither",
                            "add a numeric 'difficulty' to the rows of --data (higher is harder), or pass --reward, "
                            "--reward-model or --reward-url")
        scores = self.reward(self.prompts_for(examples), [""] * len(examples), examples)
        if len(set(scores)) == 1:
            raise RlgfError(f"the reward of the prompt alone is {scores[0]:g} for every prompt, so it cannot rank them",
                            "add a numeric 'difficulty' to the rows of --data (higher is harder)")
        return PromptDifficulty(tuple(scores), "score", "prompt_reward",
                                "the reward of the prompt with an empty completion; higher is easier")

    def check_reward(self) -> None:
        if self.reward_spec is None:
            self.reward([], [], [])

    def metrics(self, prompts, completions, examples, policy=None, reference_policy=None) -> dict:
        out: dict[str, float] = {}
        if self.reward_spec is not None and completions:
            values = self.reward(prompts, completions, examples)
            out["reward"] = sum(values) / len(values)
        if completions:
            out["length"] = sum(len(c.split()) for c in completions) / len(completions)
        refs = [ref for ex in examples for ref in ex.references]
        if completions and examples and all(ex.references for ex in examples):
            out.update(overlap_metrics(completions, [ex.references for ex in examples]))
        if can_score(policy) and refs:
            rendered = self.prompts_for(examples, policy)  # a chat scored as the policy reads it
            contexts = [text for ex, text in zip(examples, rendered) for _ in ex.references]
            out["perplexity"] = corpus_perplexity(policy, contexts, refs)
        if can_score(reference_policy) and completions:
            contexts = self.prompts_for(examples, reference_policy) if len(examples) == len(completions) else prompts
            out["output_perplexity"] = corpus_perplexity(reference_policy, list(contexts), list(completions))
        return out

    def info(self) -> dict:
        splits = self.splits()
        reward = None
        if self.reward_spec is not None:
            flag, value = self.reward_spec
            reward = f"{flag} {value}"
        chats = sum(1 for rows in splits.values() for ex in rows if "messages" in ex.meta)
        return {"task": self.name, "data": str(self.path), "split_seed": self.seed,
                "splits": {k: len(v) for k, v in splits.items()}, "reward": reward,
                "chat_rows": chats, "chat_template": self.chat.mode}


def overlap_metrics(completions, references) -> dict[str, float]:
    """Corpus BLEU-4 and ROUGE-L of the completions against their references (pycocoevalcap,
    on the Python PTB tokenization, so no Java is needed)."""
    from tasks.scoring.coco_metrics import PTBTokenizer, bleu4, rouge_l

    tokenizer = PTBTokenizer("python")
    hyps, refs = tokenizer(list(completions)), tokenizer.refs(list(references))
    return {"bleu4": bleu4(hyps, refs)[0], "rouge_l": rouge_l(hyps, refs)[0]}


# -- reading ----------------------------------------------------------------------
HF_PREFIX = "hf:"
#: rows without a split are split 80/10/10 from this many on; fewer are all train rows
MIN_SPLIT_ROWS = 10
#: the optional column ``rlgf difficulty`` buckets by (a number; higher is harder)
DIFFICULTY_FIELD = "difficulty"


def read_rows(path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line, row)`` pairs of a prompts file (line numbers as an editor shows them), of a
    ``datasets`` ``save_to_disk`` folder, or of an ``hf:NAME[:SPLIT]`` dataset (row numbers from 1)."""
    if isinstance(path, str) and path.startswith(HF_PREFIX):
        from tasks.hub_rows import hub_rows

        local = Path(path[len(HF_PREFIX):]).expanduser()
        if not (path[len(HF_PREFIX):].strip() and local.is_file()):
            yield from hub_rows(path[len(HF_PREFIX):])
            return
        path = local  # hf:FILE: the file itself (datasets reads a folder, not a file, by its path)
    if is_saved_dataset(path):  # a folder of Dataset.save_to_disk: read as --data hf:PATH reads it
        from tasks.hub_rows import hub_rows

        yield from hub_rows(str(path))
        return
    if not path.is_file():
        what = "is a folder, not a prompts file" if path.is_dir() else "not found"
        raise RlgfError(f"prompts file {what}: {path}",
                        "pass --data FILE (a .jsonl, .json, .csv, .tsv, .parquet or .txt file), or a folder saved "
                        "by datasets' save_to_disk")
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise RlgfError(f"{path}: unknown prompts file type {path.suffix!r}",
                        f"use one of: {', '.join(sorted(FORMATS))} (.txt: one prompt per line)")
    try:
        if kind == "jsonl":
            yield from _jsonl(path)
        elif kind == "csv":
            yield from csv_rows(path)
        elif kind == "text":
            yield from _text(path)
        else:
            yield from parquet_rows(path)
    except UnicodeDecodeError as exc:
        raise not_utf8(path, exc) from None


_JSON_HINT = "each line must be one JSON object, e.g. {\"prompt\": \"...\"} (or the file one JSON array of them)"


def _jsonl(path: Path):
    if starts_json_array(path):  # a .json file of [{...}, {...}]: what json.dump of a list writes
        yield from json_array_rows(path, _JSON_HINT)
        return
    with path.open(encoding="utf-8-sig") as fh:  # -sig: a byte-order mark (Notepad's, Excel's) is not text
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise RlgfError(f"{path}, line {n}: not valid JSON ({exc.msg})", _JSON_HINT) from None
            if not isinstance(row, dict):
                raise RlgfError(f"{path}, line {n}: a JSON {type(row).__name__}, not an object", _JSON_HINT)
            yield n, row


def _text(path: Path):
    """A plain text file: each non-blank line is one prompt (its line break removed)."""
    with path.open(encoding="utf-8-sig") as fh:
        for n, line in enumerate(fh, 1):
            text = line.rstrip("\r\n")
            if text.strip():
                yield n, {"prompt": text}


# -- rows to examples ---------------------------------------------------------------
def split_rows(rows: list[tuple[int, dict]], path: Path, *, prompt_field: str = "prompt",
               reference_field: str | None = None, seed: int = 42) -> tuple[dict[str, list[Example]], int]:
    """Examples by split — the rows' own ``split`` column, or a seeded 80/10/10 split — and how many
    rows had no split."""
    if not rows:
        raise RlgfError(f"{path} holds no rows", "add rows with a 'prompt', one per line (JSONL) or row (CSV)")
    rows = [(n, known_names(row, keep=(prompt_field, reference_field))) for n, row in rows]
    warn_misspelt_columns(rows, path, (prompt_field, reference_field))
    first = rows[0][1]
    if prompt_field not in first and not (prompt_field == "prompt" and "messages" in first):
        header = isinstance(path, Path) and path.suffix.lower() in (".csv", ".tsv")
        raise RlgfError(f"{place(path, rows[0][0])}: no '{prompt_field}' field (fields: {', '.join(map(str, first))})",
                        "name the prompt column with --prompt-field" + (
                            f" (a CSV file's first line is its header: the names of its columns, e.g. "
                            f"{prompt_field},reference)" if header else ""))
    if reference_field is not None and not any(reference_field in row for _, row in rows):
        raise RlgfError(f"{path}: no row has a '{reference_field}' field (fields: {', '.join(map(str, first))})",
                        "name the reference column with --reference-field, or leave it out")
    by_split: dict[str, list[Example]] = {s: [] for s in SPLITS}
    unsplit: list[Example] = []
    for n, row in rows:
        ref_field = reference_field or next((f for f in ("references", "reference")
                                             if row.get(f) not in (None, "", [], ())), None)
        example = _example(row, n, path, prompt_field, ref_field)
        split = row.get("split")
        if split in (None, ""):
            unsplit.append(example)
            continue
        key = SPLIT_ALIASES.get(str(split).strip().lower())
        if key is None:
            raise RlgfError(f"{place(path, n)}: unknown split {split!r}", "use train, val or test")
        by_split[key].append(example)
    if unsplit:
        order = list(range(len(unsplit)))
        random.Random(seed).shuffle(order)
        n_test = n_val = max(1, len(order) // 10) if len(order) >= MIN_SPLIT_ROWS else 0
        for rank, i in enumerate(order):
            key = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
            by_split[key].append(unsplit[i])
    return by_split, len(unsplit)


def _example(row: dict, n: int, path: Path, prompt_field: str, ref_field: str | None) -> Example:
    prompt = row.get(prompt_field)
    meta: dict = {"line": n}
    if prompt is None and row.get("messages") not in (None, ""):
        from tasks.chat import parse_messages, plain_text

        meta["messages"] = parse_messages(json_cell(row["messages"]), path, n)
        prompt = plain_text(meta["messages"])
    check_unicode(row, path, n)
    if not isinstance(prompt, str) or not prompt.strip():
        what = f"'{prompt_field}'" + (" (or 'messages')" if prompt_field == "prompt" else "")
        raise RlgfError(f"{place(path, n)}: {what} is {'missing' if prompt is None else 'not a text'}",
                        "every row needs a non-empty prompt text or a chat")
    refs: tuple[str, ...] = ()
    if ref_field is not None:
        value = row.get(ref_field)
        if ref_field == "references":  # a list, written as JSON in a CSV cell
            value = json_cell(value)
        if isinstance(value, str):
            refs = (value,) if value else ()
        elif isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            refs = tuple(v for v in value if v)
        elif value is not None:
            raise RlgfError(f"{place(path, n)}: '{ref_field}' must be a text or a list of texts")
    level = row.get(DIFFICULTY_FIELD)
    if level not in (None, ""):  # read as a number by `rlgf difficulty` alone: training ignores it
        meta[DIFFICULTY_FIELD] = level
    return Example(prompt=prompt, references=refs, target=refs[0] if refs else "", meta=meta)


#: the columns rlgf reads by name; a file's ``Prompt``, `` reference`` or ``Split`` means them too
KNOWN_FIELDS = ("prompt", "messages", "reference", "references", "split", DIFFICULTY_FIELD)


def known_names(row: dict, keep=()) -> dict:
    """``row`` with a column named like a known one but for case and spaces (``Reference``,
    `` prompt``) under the known name, unless the row has that name itself or the column is one
    the user named (``keep``: ``--prompt-field Prompt`` means that column as it is)."""
    out = dict(row)
    for key in row:
        name = str(key).strip().lower()
        if name in KNOWN_FIELDS and key != name and name not in row and key not in keep:
            out[name] = out.pop(key)
    return out


def warn_misspelt_columns(rows: list[tuple[int, dict]], path, named=()) -> None:
    """One ``warning:`` per column that is not read but is spelt almost like one that would be
    (``refernce``): other columns (an id, notes) are left alone silently, as before."""
    import warnings

    from backends.errors import RlgfWarning, did_you_mean

    present = {str(k) for _, row in rows for k in row}
    wanted = [f for f in (*KNOWN_FIELDS, *named) if f and f not in present]
    for column in sorted(present - set(KNOWN_FIELDS) - {f for f in named if f}):
        guess = did_you_mean(column.strip().lower(), wanted, n=1, cutoff=0.8)
        if guess:
            warnings.warn(RlgfWarning(f"{path}: the column {column!r} is not read — {guess.strip()} "
                                      "(rename it, or name it with --prompt-field/--reference-field)"), stacklevel=2)


def json_cell(value):
    """A CSV cell holding a JSON list (``["a", "b"]``, a chat's turns) as that list; else as it is."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def check_unicode(row: dict, path: Path, n: int) -> None:
    """Refuse text no tokenizer can take: a lone surrogate (``\\ud83d``, half of an emoji's
    escape, valid JSON but not Unicode)."""
    def texts(value):
        if isinstance(value, str):
            yield value
        elif isinstance(value, (list, tuple)):
            for v in value:
                yield from texts(v)
        elif isinstance(value, dict):
            for v in value.values():
                yield from texts(v)

    for key, value in row.items():
        for text in texts(value):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise RlgfError(f"{place(path, n)}: '{key}' holds {text[exc.start]!r}, half of a UTF-16 pair, "
                                "which is not text", "write the character itself, or its whole escape pair "
                                "(e.g. \\ud83d\\ude00)") from None


def _number(value, path: Path, n: int) -> float:
    """A finite number from a row's difficulty (a JSON number, or a CSV text such as ``"2.5"``)."""
    try:
        number = float(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError):
        number = None
    if number is None or not math.isfinite(number):
        raise RlgfError(f"{place(path, n)}: '{DIFFICULTY_FIELD}' is {value!r}, not a number",
                        f"give '{DIFFICULTY_FIELD}' a number (higher is harder), or leave it empty")
    return number

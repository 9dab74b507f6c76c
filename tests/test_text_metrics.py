"""Caption metrics pinned to the reference implementations (pycocoevalcap 1.2).

Java-based checks (the PTB tokenizer, METEOR) are skipped with a reason when Java is missing;
they are batched into few calls because each JVM start is slow.
"""

from __future__ import annotations

import json
import math
import shutil

import pytest

from backends.errors import RlgfError
from tasks.scoring import coco_metrics, spice
from tasks.scoring.coco_metrics import CiderD, PTBTokenizer, approx_ptb_tokenize, bleu4, cider_d, java_available, rouge_l

needs_java = pytest.mark.skipif(
    not java_available(), reason="Java not found: install Debian's default-jre-headless (`make setup` as root)"
)

# Raw texts: several references per item, punctuation, clitics, capitals, an empty hypothesis.
HYPS = [
    "A dog catches a frisbee thrown by a man.",
    "The girl picks apples from the tree.",
    "Horses run in a field",
    "A skier skis down the snowy mountain!",
    "",
    "A man's dog isn't catching the ball, he throws it again.",
]
REFS = [
    ["A dog leaps to catch a thrown frisbee.", "The dog catches the frisbee when the boy throws it.",
     "A man throws away his dog's favorite frisbee expecting him to catch it in the air."],
    ["She picks an apple from the tree.", "Apples are picked from trees in autumn."],
    ["A horse runs across the field.", "Horses run in the open field.", "The horse is running in a field."],
    ["People ski down the snowy mountain."],
    ["A cat sits on the mat.", "The cat is sitting on a mat."],
    ["The man throws the ball and his dog catches it.", "A dog catches a ball thrown by its owner."],
]  # fmt: skip


def library_tokenize(hyps, refs):
    """pycocoevalcap's own PTBTokenizer (writes a temp file into its package folder)."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer as LibPTB

    gts = {i: [{"caption": r} for r in rs] for i, rs in enumerate(refs)}
    res = {i: [{"caption": h}] for i, h in enumerate(hyps)}
    tok = LibPTB()
    return tok.tokenize(res), tok.tokenize(gts)


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


@pytest.fixture(scope="module")
def tokenized():
    """(hyps, refs) tokenized by our PTB wrapper (Java when present, else the approximation)."""
    tok = PTBTokenizer()
    return tok(HYPS), tok.refs(REFS)


# -- tokenization ---------------------------------------------------------------------------


@needs_java
def test_ptb_wrapper_equals_pycocoevalcap_tokenizer(tokenized):
    hyps = [h for h in HYPS if h]  # the library cannot tokenize an empty caption at the end
    refs = [r for h, r in zip(HYPS, REFS) if h]
    lib_res, lib_gts = library_tokenize(hyps, refs)
    ours = PTBTokenizer("java")
    assert ours(hyps) == [lib_res[i][0] for i in range(len(hyps))]
    assert ours.refs(refs) == [lib_gts[i] for i in range(len(refs))]
    assert tokenized[0][4] == ""  # empty stays empty
    assert tokenized[0][5] == "a man 's dog is n't catching the ball he throws it again"


@needs_java
def test_python_approximation_agrees_with_corenlp_on_plain_sentences():
    sentences = [s for s in HYPS if s] + [r for refs in REFS for r in refs] + [
        "He said \"hello\" to the U.S. team (twice).", "Mr. Smith can't go -- it's 3.5 miles; sad...",
    ]  # fmt: skip
    assert approx_ptb_tokenize(sentences) == coco_metrics.ptb_tokenize(sentences)


def test_tokenizer_caches_and_names_itself():
    tok = PTBTokenizer("python")
    assert tok(["A Dog, running."]) == ["a dog running"]
    assert tok(["A Dog, running.", "x"]) == ["a dog running", "x"]
    assert "approximation" in tok.name
    assert tok.refs([["A b.", "C"], ["D!"]]) == [["a b", "c"], ["d"]]


# -- BLEU-4 and CIDEr-D: our pipeline = the library's own pipeline, to 1e-6 ------------------


@needs_java
def test_bleu4_and_cider_d_equal_pycocoevalcap_end_to_end():
    """Our tokenizer + wrappers against pycocoevalcap's tokenizer + scorers on the same raw texts."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    hyps = [h for h in HYPS if h]
    refs = [r for h, r in zip(HYPS, REFS) if h]
    res, gts = library_tokenize(hyps, refs)
    lib_bleu, lib_bleu_each = Bleu(4).compute_score(gts, res, verbose=0)
    lib_cider, lib_cider_each = Cider().compute_score(gts, res)

    tok = PTBTokenizer("java")
    h, r = tok(hyps), tok.refs(refs)
    ours_bleu, ours_bleu_each = bleu4(h, r)
    ours_cider, ours_cider_each = cider_d(h, r)
    assert rel(ours_bleu, lib_bleu[3]) < 1e-6
    assert rel(ours_cider, lib_cider) < 1e-6
    assert all(rel(a, b) < 1e-6 for a, b in zip(ours_bleu_each, lib_bleu_each[3]))
    assert all(abs(a - b) < 1e-9 for a, b in zip(ours_cider_each, lib_cider_each))
    assert 0 < ours_bleu < 1 and ours_cider > 0


def test_per_sample_cider_d_equals_the_library_when_the_idf_is_the_same(tokenized):
    """CiderD (our per-sample scorer, fixed idf) = pycocoevalcap's CiderScorer when the idf
    corpus is the scored texts' own references."""
    from pycocoevalcap.cider.cider import Cider

    hyps, refs = tokenized
    gts = {i: r for i, r in enumerate(refs)}
    res = {i: [h] for i, h in enumerate(hyps)}
    lib_score, lib_each = Cider().compute_score(gts, res)
    ours = CiderD(refs).scores(hyps, refs)
    worst = max(rel(a, b) for a, b in zip(ours, lib_each) if b)
    assert worst < 1e-6
    assert all(a == 0 for a, b in zip(ours, lib_each) if not b)
    assert rel(sum(ours) / len(ours), lib_score) < 1e-6
    assert rel(cider_d(hyps, refs)[0], lib_score) < 1e-6


def test_per_sample_cider_d_is_independent_of_the_batch(tokenized):
    hyps, refs = tokenized
    scorer = CiderD(refs + [["an unrelated caption about boats"], ["another one about trains"]])
    alone = [scorer.score(h, r) for h, r in zip(hyps, refs)]
    assert scorer.scores(hyps[::-1], refs[::-1]) == alone[::-1]
    assert alone[0] > 0  # one sample alone is scored (the library would give 0 for a batch of one)
    assert cider_d(hyps[:1], refs[:1])[0] == 0.0
    assert scorer.score(refs[0][0], refs[0]) > scorer.score("completely different words here", refs[0])


def test_rouge_l_is_the_library(tokenized):
    from pycocoevalcap.rouge.rouge import Rouge

    hyps, refs = tokenized
    lib, lib_each = Rouge().compute_score({i: r for i, r in enumerate(refs)}, {i: [h] for i, h in enumerate(hyps)})
    ours, ours_each = rouge_l(hyps, refs)
    assert rel(ours, lib) < 1e-12 and list(ours_each) == list(lib_each)


def test_bad_shapes_are_errors():
    with pytest.raises(ValueError, match="2 hypotheses for 1"):
        bleu4(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match="no references"):
        rouge_l(["a"], [[]])
    with pytest.raises(ValueError):
        CiderD([])


@needs_java
def test_meteor_is_the_library(tokenized):
    """One METEOR process serves every call in this Python process (it takes ~10 s to start)."""
    hyps, refs = tokenized
    score, each = coco_metrics.meteor(hyps, refs)
    scorer = coco_metrics._meteor_scorer()
    lib, lib_each = scorer.compute_score({i: r for i, r in enumerate(refs)}, {i: [h] for i, h in enumerate(hyps)})
    assert rel(score, lib) < 1e-12 and each == lib_each
    assert 0 < score < 1 and each[4] == 0.0


# -- SPICE: unavailable without CoreNLP 3.6.0 --------------------------------------------------


def test_spice_unavailable_says_what_to_install(tmp_path, monkeypatch):
    folder = tmp_path / "spice"
    (folder / "lib").mkdir(parents=True)
    (folder / "spice-1.0.jar").write_bytes(b"")
    monkeypatch.setattr(spice, "spice_dir", lambda: folder)
    ok, reason = spice.spice_status()
    assert not ok
    assert "Stanford CoreNLP 3.6.0" in reason and "stanford-corenlp-3.6.0-models.jar" in reason
    assert str(folder / "lib") in reason and "nlp.stanford.edu" in reason
    with pytest.raises(RlgfError, match="SPICE is unavailable: SPICE needs Stanford CoreNLP 3.6.0"):
        spice.spice_scores(["a dog"], [["a dog runs"]])
    # with the jars in place (and Java), SPICE counts as available
    for name in spice.CORENLP_JARS:
        (folder / "lib" / name).write_bytes(b"")
    assert spice.spice_status() == ((True, "") if java_available() else spice.spice_status())


def test_spice_command_and_output_parsing(tmp_path):
    cmd = spice.spice_command("java", 17, tmp_path / "spice-1.0.jar", tmp_path / "in.json", tmp_path / "out.json", None)
    assert cmd[:3] == ["java", "--add-opens", "java.base/java.lang=ALL-UNNAMED"]
    assert cmd[cmd.index("-jar") + 1] == "-Xmx8G" and "-subset" in cmd and "-cache" not in cmd
    assert "--add-opens" not in spice.spice_command("java", 8, tmp_path / "s.jar", tmp_path / "i", tmp_path / "o", tmp_path)
    out = json.loads(json.dumps([
        {"image_id": 1, "scores": {"All": {"f": 0.25, "pr": 0.5, "re": 0.2}}},
        {"image_id": 0, "scores": {"All": {"f": None}}},
    ]))  # fmt: skip
    values = spice.parse_output(out, 2)
    assert math.isnan(values[0]) and values[1] == 0.25
    with pytest.raises(RlgfError, match="no score for 1 of 3"):
        spice.parse_output(out, 3)


# -- BERTScore -----------------------------------------------------------------------------


def test_bertscore_specs(tmp_path):
    from tasks.scoring.bertscore import parse_spec

    path, layer, text = parse_spec(None)
    assert layer == 6 and "MiniLM" in text and "roberta-large" in text
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"num_hidden_layers": 3}))
    assert parse_spec(str(model))[:2] == (str(model), 3)
    assert parse_spec(f"{model}@2")[:2] == (str(model), 2)
    assert parse_spec("roberta-large")[:2] == ("roberta-large", 17)
    with pytest.raises(RlgfError, match="layer number"):
        parse_spec(f"{model}@x")
    with pytest.raises(RlgfError, match="@LAYER"):
        parse_spec("some-unknown/model")


def test_bertscore_minilm_offline_best_reference():
    from tasks.scoring.bertscore import BertScore

    scorer = BertScore(None, device="cpu")
    hyps = ["a dog catches a frisbee", "the girl picks apples"]
    refs = [["a dog catches a frisbee", "boats on the sea"], ["the stock market fell", "she picks an apple"]]
    f1 = scorer.f1(hyps, refs)
    assert f1[0] == pytest.approx(1.0, abs=1e-4)
    singles = [scorer.f1([hyps[1]], [[r]])[0] for r in refs[1]]
    assert f1[1] == pytest.approx(max(singles), abs=1e-5)
    assert scorer.f1(["", "  ", hyps[0]], [refs[0], refs[0], refs[0]]) == pytest.approx([0.0, 0.0, f1[0]], abs=1e-6)


def test_java_missing_is_reported(monkeypatch):
    coco_metrics.java_info.cache_clear()
    monkeypatch.setattr(shutil, "which", lambda name: None)
    try:
        assert coco_metrics.java_info()[0] is None
        with pytest.raises(RlgfError, match="needs Java") as err:
            PTBTokenizer("java")
        assert "default-jre-headless" in err.value.hint
        assert PTBTokenizer("auto").kind == "python"
    finally:
        coco_metrics.java_info.cache_clear()

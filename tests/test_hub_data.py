"""The Hugging Face hub's IMDB and CommonGen, as the ``datasets`` package hands them over.

The hub itself cannot be reached here; these tests build real ``datasets`` objects with the
hub's columns and check the conversion, and check that an unreachable hub is one clear error.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

datasets = pytest.importorskip("datasets")

from tasks.commongen import common_gen_from_hub  # noqa: E402
from tasks.imdb import imdb_parts_from_hub  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def test_imdb_rows_become_cleaned_labelled_reviews():
    data = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"text": ["Bad.<br /><br />Really  bad.", "Great fun!"], "label": [0, 1]}),
        "test": datasets.Dataset.from_dict({"text": ["Fine<br />film"], "label": [1]}),
        "unsupervised": datasets.Dataset.from_dict({"text": ["no label"], "label": [-1]}),
    })
    parts = imdb_parts_from_hub(data)
    assert set(parts) == {"train", "test"}, "the unlabelled split is not used"
    assert [(r.text, r.label, r.meta["row"]) for r in parts["train"]] == [
        ("Bad. Really bad.", 0, 0), ("Great fun!", 1, 1)]
    assert [(r.text, r.label) for r in parts["test"]] == [("Fine film", 1)]


def test_common_gen_rows_group_into_concept_sets():
    cols = ("concept_set_idx", "concepts", "target")
    train = [(0, ["dog", "run"], "A dog  runs."), (0, ["dog", "run"], "The dog is running."),
             (1, ["sky", "blue"], "The sky is blue."), (2, ["cat", "sit"], "   ")]
    val = [(7, ["ball", "throw"], "He throws the ball.")]
    data = datasets.DatasetDict({
        name: datasets.Dataset.from_dict({c: [row[i] for row in rows] for i, c in enumerate(cols)})
        for name, rows in (("train", train), ("validation", val))
    })
    out = common_gen_from_hub(data)
    assert [(s.concepts, s.targets) for s in out["train"]] == [
        (("dog", "run"), ["A dog runs.", "The dog is running."]),
        (("sky", "blue"), ["The sky is blue."]),
    ], "whitespace is normalised and a set without a target is dropped"
    assert [(s.concepts, s.targets) for s in out["val"]] == [(("ball", "throw"), ["He throws the ball."])]
    assert out["test"] == out["val"], "the hub's test targets are hidden: val doubles as test"


@pytest.mark.parametrize("task, name, hint", [("imdb", "imdb", "aclImdb"), ("commongen", "common_gen", "JSONL")])
def test_unreachable_hub_is_one_error_line(tmp_path, tiny_causal_dir, task, name, hint):
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "rlgf_cli", "eval", "--task", task, "--policy", str(tiny_causal_dir),
         "--limit", "2", "--device", "cpu", "--json", str(tmp_path / "r.json")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith(f"[error] could not load the {name} dataset from the Hugging Face hub")
    assert "--data" in lines[0] and hint in lines[0]
    assert not (tmp_path / "r.json").exists()


def test_an_unreachable_hub_fails_at_once_and_leaves_online_mode_as_it_was(monkeypatch, caplog):
    # no retries (about 25 s of warnings): the hub's datasets load in offline mode, from the cache or not at all
    import datasets.config
    import huggingface_hub.constants

    import backends.hf.util as util
    from backends.errors import RlgfError
    from tasks.commongen_data import load_hf_common_gen
    from tasks.imdb import load_hf_imdb

    monkeypatch.setattr(util, "hub_reachable", lambda timeout=3.0: False)
    before = (datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE)
    for load in (load_hf_imdb, load_hf_common_gen):
        with pytest.raises(RlgfError) as err:
            load()
        assert "OfflineModeIsEnabled" in err.value.message and "--data" in err.value.hint
    assert not any("Retrying" in r.getMessage() for r in caplog.records)
    assert (datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE) == before

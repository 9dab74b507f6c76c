"""The ``commongen`` task from a JSONL file: grouping, prompts, decoding, rewards, metrics, CLI."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from backends.errors import RlgfError
from rlgf_cli.app import app
from tasks import get_task
from tasks.scoring.coco_metrics import CiderD, PTBTokenizer, bleu4, java_available
from tasks.commongen import METRICS, PREFIX, CommonGenTask, make_prompt
from tasks.scoring.spice import spice_status

runner = CliRunner()
SPICE_OK = spice_status()[0]
needs_no_spice = pytest.mark.skipif(SPICE_OK, reason="Stanford CoreNLP 3.6.0 is installed here: SPICE is available")

ROWS = [
    # train: one concept set spread over three rows ("target" and "targets", concepts in another order)
    {"concepts": ["dog", "frisbee", "catch", "throw"], "target": "A dog leaps to catch a thrown frisbee.", "split": "train"},
    {"concepts": ["dog", "frisbee", "catch", "throw"], "target": "The dog catches the frisbee when the boy throws it.", "split": "train"},
    {"concepts": ["throw", "dog", "frisbee", "catch"], "targets": ["A man throws a frisbee and his dog catches it."], "split": "train"},
    {"concepts": ["apple", "tree", "pick"], "targets": ["She picks an apple from the tree.", "Apples are picked from trees in autumn."], "split": "train"},
    {"concepts": ["field", "run", "horse"], "targets": ["A horse runs across the field.", "Horses run in the open field."], "split": "train"},
    {"concepts": ["ski", "mountain", "snow"], "targets": ["People ski down the snowy mountain.", "He skis on fresh snow on the mountain."], "split": "train"},
    {"concepts": ["cat", "mat", "sit"], "target": "", "split": "train"},  # empty target: skipped
    # validation (the hub's test split has no targets, so validation doubles as test)
    {"concepts": ["boat", "lake", "row"], "targets": ["Two friends row a boat across the lake.", "A man rows his boat on a calm lake."], "split": "validation"},
    {"concepts": ["guitar", "sing", "stage"], "targets": ["She sings on stage while playing the guitar.", "A band plays guitar and sings on the stage."], "split": "validation"},
]  # fmt: skip


@pytest.fixture
def cg_file(tmp_path):
    path = tmp_path / "commongen.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n", encoding="utf-8")
    return path


def test_grouping_prompts_and_splits(cg_file):
    task = CommonGenTask(data=cg_file, reward="cider_d")
    train = task.examples("train")
    assert [ex.prompt for ex in train] == [
        "generate a sentence with: dog frisbee catch throw.",
        "generate a sentence with: apple tree pick.",
        "generate a sentence with: field run horse.",
        "generate a sentence with: ski mountain snow.",
    ]
    assert train[0].references == (
        "A dog leaps to catch a thrown frisbee.",
        "The dog catches the frisbee when the boy throws it.",
        "A man throws a frisbee and his dog catches it.",
    )
    assert task.examples("val") == task.examples("test") and len(task.examples("test")) == 2
    assert make_prompt(["a", "b"]) == PREFIX + "a b." == "generate a sentence with: a b."
    bc = task.bc_examples()
    assert len(bc) == 9 and [ex.target for ex in bc[:3]] == list(train[0].references)
    assert task.info()["splits"] == {"train": 4, "val": 2, "test": 2}


def test_decoding_and_lengths(cg_file):
    task = CommonGenTask(data=cg_file, reward="cider_d")
    assert task.max_new_tokens == 20 and task.min_new_tokens == 5
    assert task.eval_sampling.num_beams == 5 and not task.eval_sampling.do_sample
    assert task.eval_sampling.describe() == "beam search (5 beams)"
    assert task.train_sampling.do_sample and task.train_sampling.num_beams == 1
    assert task.default_learner == "hf:t5-base"
    assert CommonGenTask(data=cg_file, reward="cider_d", max_new_tokens=3).min_new_tokens == 3
    assert tuple(task.metric_names) == METRICS


def test_file_without_split_fields_is_cut_80_10_10(tmp_path):
    path = tmp_path / "plain.jsonl"
    path.write_text("\n".join(json.dumps({"concepts": [f"c{i}", "x"], "targets": [f"sentence {i}"]}) for i in range(20)))
    task = CommonGenTask(data=path, reward="bleu4")
    sizes = {s: len(task.examples(s)) for s in ("train", "val", "test")}
    assert sizes == {"train": 16, "val": 2, "test": 2}
    prompts = {s: {ex.prompt for ex in task.examples(s)} for s in sizes}
    assert not (prompts["train"] & prompts["test"]) and not (prompts["val"] & prompts["test"])


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"concepts": ["a"], "target": "x"}\n{"concepts": ["b"], "target": "y"}\n{"concepts": [\n', "line 3: not valid JSON"),
        ('{"concepts": ["a"], "target": "x"}\n{"target": "y"}\n', 'line 2: missing field "concepts"'),
        ('{"concepts": ["a"]}\n', 'line 1: missing field "targets"'),
        ('{"concepts": [], "target": "x"}\n', 'line 1: "concepts" must be a non-empty list'),
        ('{"concepts": ["a"], "targets": [1]}\n', 'line 1: "targets" must be a list of strings'),
        ('[1, 2]\n', "line 1: expected an object"),
        ('{"concepts": ["a"], "target": "x", "split": "train"}\n{"concepts": ["b"], "target": "y"}\n', "line 2: some rows"),
        ('{"concepts": ["a"], "target": "x", "split": "holdout"}\n', "line 1: split 'holdout'"),
        ("", "is empty (line 1"),
    ],
)
def test_corrupt_files_name_file_and_line(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(RlgfError) as err:
        CommonGenTask(data=path, reward="cider_d").examples("train")
    assert str(path) in err.value.message and message in err.value.message


def test_named_rewards_are_checked(cg_file):
    with pytest.raises(RlgfError) as err:
        CommonGenTask(data=cg_file, reward="cidr_d")
    assert "did you mean 'cider_d'?" in err.value.message and "module:function" in err.value.hint
    assert CommonGenTask(data=cg_file, reward="CIDEr-D").reward_kind == "cider_d"
    with pytest.raises(RlgfError, match="none.jsonl: not found"):
        CommonGenTask(data=cg_file.parent / "none.jsonl", reward="cider_d")
    with pytest.raises(RlgfError, match="is a folder, not a data file") as err:  # a save_to_disk folder, say
        CommonGenTask(data=cg_file.parent, reward="cider_d")
    assert "JSONL file" in err.value.hint


def test_data_that_is_not_json_lines_says_what_data_takes(tmp_path):
    """CSV or Parquet given to a JSON Lines task: the error's hint says what --data takes there."""
    from tasks.commongen_data import read_jsonl

    csv = tmp_path / "cg.csv"
    csv.write_text("concepts,targets\ndog frisbee,a dog catches a frisbee\n")
    with pytest.raises(RlgfError, match="line 1: not valid JSON") as err:
        read_jsonl(csv)
    assert err.value.hint.startswith("--data takes JSON Lines here")
    parquet = tmp_path / "cg.parquet"
    parquet.write_bytes(b"PAR1\x15\x04\x15\xff\xfe")
    with pytest.raises(RlgfError, match="not UTF-8 text") as err:
        read_jsonl(parquet)
    assert "not Parquet or Arrow" in err.value.hint


def test_cider_d_reward_uses_the_train_idf_and_bleu4_is_the_library(cg_file):
    task = CommonGenTask(data=cg_file, reward="cider_d")
    ex = task.examples("test")
    outs = ["Two friends row a boat on the lake.", "guitar guitar guitar sing"]
    rewards = task.reward([e.prompt for e in ex], outs, ex)
    tok = PTBTokenizer()
    scorer = CiderD(tok.refs([e.references for e in task.examples("train")]))
    assert rewards == scorer.scores(tok(outs), tok.refs([e.references for e in ex]))
    assert rewards[0] > rewards[1] > 0
    assert task.reward([e.prompt for e in ex[:1]], outs[:1], ex[:1]) == rewards[:1]  # batch-independent
    bleu_task = CommonGenTask(data=cg_file, reward="bleu4")
    assert bleu_task.reward([e.prompt for e in ex], outs, ex) == bleu4(tok(outs), tok.refs([e.references for e in ex]))[1]


@needs_no_spice
def test_spice_unavailable_rewards_and_metrics(cg_file):
    for name in ("spider", "spice"):
        with pytest.raises(RlgfError) as err:
            CommonGenTask(data=cg_file, reward=name)
        assert "Stanford CoreNLP 3.6.0" in err.value.message and "--reward cider_d" in err.value.hint
    task = CommonGenTask(data=cg_file)  # the default reward, spider, is checked lazily
    ex = task.examples("test")
    with pytest.raises(RlgfError) as err:
        task.check_reward()
    assert "default commongen reward, spider" in err.value.message and "--reward cider_d" in err.value.hint
    with pytest.raises(RlgfError, match="Stanford CoreNLP 3.6.0"):
        task.reward([e.prompt for e in ex], ["a boat"] * len(ex), ex)
    info = task.info()
    assert info["spice"].startswith("unavailable — SPICE needs Stanford CoreNLP 3.6.0")
    assert info["spider"].startswith("unavailable — ") and "unavailable here" in info["reward"]
    assert set(task.unavailable_metrics()) >= {"spice", "spider"}


def test_metrics_equal_the_library_on_tokenized_texts(cg_file):
    """The task's metrics are the pycocoevalcap scorers on PTB-tokenized texts, against every reference."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    task = CommonGenTask(data=cg_file, reward="cider_d")
    ex = task.examples("train")
    outs = ["A dog catches the frisbee.", "She picks apples from a tree.", "A horse runs in the field.", "Skiing in snow."]
    metrics = task.metrics([e.prompt for e in ex], outs, ex)
    tok = PTBTokenizer()
    gts = {i: refs for i, refs in enumerate(tok.refs([e.references for e in ex]))}
    res = {i: [h] for i, h in enumerate(tok(outs))}
    assert metrics["bleu4"] == pytest.approx(Bleu(4).compute_score(gts, res, verbose=0)[0][3], rel=1e-6)
    assert metrics["cider_d"] == pytest.approx(Cider().compute_score(gts, res)[0], rel=1e-6)
    assert metrics["rouge_l"] == pytest.approx(Rouge().compute_score(gts, res)[0], rel=1e-12)
    assert ("meteor" in metrics) == java_available()
    assert 0 < metrics["bertscore_f1"] <= 1
    if not SPICE_OK:
        assert "spice" not in metrics and "spider" not in metrics  # never a made-up 0
    assert list(metrics) == [m for m in METRICS if m in metrics]


def test_custom_reward_in_the_constructor(cg_file, tmp_path):
    module = tmp_path / "cg_reward.py"
    module.write_text("def length(prompts, completions, references):\n    return [len(c.split()) / len(references[i]) for i, c in enumerate(completions)]\n")
    task = CommonGenTask(data=cg_file, reward=f"{module}:length")
    ex = task.examples("train")[:2]
    assert task.reward([e.prompt for e in ex], ["a b c", "a"], ex) == [3 / 3, 1 / 2]
    assert task.info()["reward"] == f"custom: {module}:length"


# -- the command line --------------------------------------------------------------------------


@pytest.mark.usefixtures("torch_one_thread")
def test_cli_eval_commongen_end_to_end(tmp_path, cg_file, tiny_seq2seq_dir):
    report = tmp_path / "eval.json"
    result = runner.invoke(app, [
        "eval", "--task", "commongen", "--data", str(cg_file), "--policy", str(tiny_seq2seq_dir),
        "--reference", str(tiny_seq2seq_dir), "--limit", "2", "--device", "cpu", "--json", str(report), "--quiet",
        "--samples", str(tmp_path / "samples.jsonl"),
    ])  # fmt: skip
    assert result.exit_code == 0, (result.output, result.exception)
    rows = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(len(r["references"]) > 1 for r in rows)
    if not SPICE_OK:  # the default SPIDEr reward cannot run: samples carry no reward, eval still succeeds
        assert all("scores" not in r for r in rows)
    data = json.loads(report.read_text())
    (res,) = data["results"]
    assert res["task"] == "commongen" and res["n"] == 2
    assert res["decoding"] == "beam search (5 beams)"
    expected = {"bleu4", "cider_d", "rouge_l", "bertscore_f1"} | ({"meteor"} if java_available() else set())
    assert expected <= set(res["metrics"])
    info = data["task_info"]
    assert "MiniLM" in info["bertscore_model"] and "PTB" in info["tokenizer"]
    if not SPICE_OK:
        assert "spice" not in res["metrics"] and info["spice"].startswith("unavailable — SPICE needs Stanford CoreNLP")


@needs_no_spice
def test_cli_reward_spider_fails_with_what_to_install(cg_file, tiny_seq2seq_dir, tmp_path):
    result = runner.invoke(app, [
        "train", "--task", "commongen", "--data", str(cg_file), "--learner", str(tiny_seq2seq_dir),
        "--reward", "spider", "--out", str(tmp_path / "run"), "--device", "cpu", "--quiet",
    ])  # fmt: skip
    assert result.exit_code == 1
    line = [x for x in result.output.splitlines() if x.startswith("[error]")]
    assert len(line) == 1 and "Stanford CoreNLP 3.6.0" in line[0] and "--reward cider_d" in line[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.usefixtures("torch_one_thread")
def test_cli_train_commongen_one_iteration_with_cider_d(cg_file, tiny_seq2seq_dir, tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, [
        "train", "--task", "commongen", "--data", str(cg_file), "--learner", str(tiny_seq2seq_dir),
        "--reward", "cider_d", "--out", str(out), "--iterations", "1", "--episodes", "4",
        "--minibatch-size", "2", "--epochs", "1", "--device", "cpu", "--quiet",
    ])  # fmt: skip
    assert result.exit_code == 0, (result.output, result.exception)
    (line,) = (out / "metrics.jsonl").read_text().splitlines()
    metrics = json.loads(line)
    assert metrics["iteration"] == 1 and metrics["reward_mean"] >= 0
    assert (out / "final").is_dir()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "commongen" and summary["task_info"]["reward"].startswith("cider_d")


def test_registry_lists_the_tasks():
    result = runner.invoke(app, ["tasks", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert rows["commongen"]["default_learner"] == "hf:t5-base" and rows["imdb"]["default_learner"] == "hf:gpt2"
    assert rows["commongen"]["metrics"] == list(METRICS)
    assert rows["imdb"]["metrics"] == ["sentiment", "perplexity", "output_perplexity"]
    assert "common_gen" in rows["commongen"]["data_source"] and "aclImdb" in rows["imdb"]["data_source"]
    assert "spider" in rows["commongen"]["reward"] and "distilbert-imdb" in rows["imdb"]["reward"]
    for row in rows.values():
        assert "reward" in row["options"]
    with pytest.raises(RlgfError, match="commongen has no option 'reward_model'"):
        get_task("commongen", reward_model="somewhere")

"""Defects a new user hits first: small runs, offline evaluation, test-only data files."""

from __future__ import annotations

import json
import tomllib

import pytest
from typer.testing import CliRunner

from backends.errors import RlgfError
from rlgf_cli.app import app
from rlgf_cli.training.config import build_config

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _error(result) -> str:
    lines = [x for x in result.output.splitlines() if x.startswith("[error]")]
    assert result.exit_code == 1 and len(lines) == 1, result.output
    assert "Traceback" not in result.output
    return lines[0]


# -- 1. a minibatch size nobody asked for follows --episodes ------------------------------------


def test_an_unset_minibatch_size_follows_the_episodes():
    assert build_config(None).minibatch_size == 16  # the paper's default with its 64 episodes
    assert build_config(None, episodes=4).minibatch_size == 4
    assert build_config(None, episodes=40).minibatch_size == 16
    assert build_config(None, episodes=4, minibatch_size=2).minibatch_size == 2
    with pytest.raises(RlgfError, match="--minibatch-size 8 is larger than --episodes 4"):
        build_config(None, episodes=4, minibatch_size=8)  # given explicitly: still an error
    with pytest.raises(RlgfError, match="--minibatch-size must be >= 0"):
        build_config(None, minibatch_size=-1)


def test_a_config_file_minibatch_size_follows_fewer_episodes_with_a_warning(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("minibatch_size = 16\n")
    with pytest.warns(Warning, match="minibatch size 16 of .*c.toml is more than --episodes 4: minibatches of 4"):
        assert build_config(str(cfg), episodes=4).minibatch_size == 4
    cfg.write_text("minibatch_size = 16\nepisodes = 4\n")  # the file contradicts itself: an error
    with pytest.raises(RlgfError, match="--minibatch-size 16 is larger than --episodes 4"):
        build_config(str(cfg))


def test_train_with_few_episodes_runs_and_records_the_resolved_minibatch(tmp_path, tiny_causal_dir, tiny_reward_dir):
    out = tmp_path / "run"
    result = runner.invoke(app, [
        "train", "--task", "rotten-tomatoes", "--alg", "ppo", "--iterations", "1", "--episodes", "4",
        "--learner", str(tiny_causal_dir), "--reward-model", str(tiny_reward_dir), "--out", str(out),
        "--epochs", "1", "--max-new-tokens", "4", "--device", "cpu", "--quiet",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    saved = tomllib.loads((out / "config.toml").read_text())["train"]
    assert saved["minibatch_size"] == 4 and saved["episodes"] == 4
    line = _error(runner.invoke(app, [
        "train", "--episodes", "4", "--minibatch-size", "8", "--learner", str(tiny_causal_dir),
        "--reward-model", str(tiny_reward_dir), "--out", str(tmp_path / "other"), "--device", "cpu", "--quiet",
    ]))  # fmt: skip
    assert "--minibatch-size 8 is larger than --episodes 4" in line
    assert not (tmp_path / "other").exists()


def test_distill_and_then_configs_follow_their_episodes(tmp_path):
    from rlgf_cli.evaluation.distill import DistillOptions, configs

    then_toml = tmp_path / "then.toml"
    then_toml.write_text("episodes = 4\n")  # no minibatch_size: the --then run follows these episodes
    bc, then = configs(DistillOptions(guide="hf:x", episodes=8, then="ppo++", then_config=str(then_toml),
                                      out=str(tmp_path / "d"), device="cpu"))
    assert bc.minibatch_size == 8 and then.minibatch_size == 4
    with pytest.raises(RlgfError, match="--minibatch-size 16 is larger than --episodes 8"):
        configs(DistillOptions(guide="hf:x", episodes=8, minibatch_size=16, out=str(tmp_path / "d")))


# -- 2. a reference model that cannot load leaves output_perplexity out, with the reason ------


def _eval(*args):
    return runner.invoke(app, ["eval", "--device", "cpu", "--quiet", *args])


def test_an_unloadable_default_reference_leaves_output_perplexity_out(tmp_path, tiny_causal_dir, tiny_reward_dir):
    from tiny_assets import make_tiny_checkpoint

    gone = tmp_path / "initial-learner-no-longer-here"  # as hf:t5-base is offline: it cannot load
    ckpt = make_tiny_checkpoint(tmp_path / "run" / "final", gone, seed=1)
    report = tmp_path / "eval.json"
    result = _eval("-c", str(ckpt), "--reward-model", str(tiny_reward_dir), "--limit", "2", "--max-new-tokens", "4",
                   "--json", str(report))
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    (res,) = data["results"]
    assert set(res["metrics"]) == {"sentiment", "perplexity"}  # left out, never reported as 0
    why = data["task_info"]["output_perplexity"]
    assert why.startswith(f"unavailable — the reference model {gone} could not be loaded") and "--reference none" in why

    result = _eval("-c", str(ckpt), "--reward-model", str(tiny_reward_dir), "--limit", "2", "--max-new-tokens", "4",
                   "--reference", "none", "--json", str(report))
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert "output_perplexity" not in data["results"][0]["metrics"]
    assert data["task_info"]["output_perplexity"] == "not computed (--reference none)"

    line = _error(_eval("-c", str(ckpt), "--reward-model", str(tiny_reward_dir), "--reference", str(gone)))
    assert str(gone) in line and "--reference none" in line  # asked for by name: an error


def _commongen_file(path, split="test"):
    rows = [
        {"concepts": ["dog", "frisbee", "catch"], "targets": ["A dog catches a frisbee.", "The dog leaps for the frisbee."]},
        {"concepts": ["boat", "lake", "row"], "targets": ["Two friends row a boat across the lake."]},
        {"concepts": ["guitar", "sing", "stage"], "targets": ["She sings on stage with her guitar."]},
    ]
    path.write_text("".join(json.dumps({**r, "split": split}) + "\n" for r in rows), encoding="utf-8")
    return path


def test_commongen_eval_of_an_api_policy_on_test_rows_needs_no_reference_or_train_rows(tmp_path, tiny_causal_dir,
                                                                                       monkeypatch):
    from tasks.commongen import CommonGenTask
    from tiny_assets import served

    monkeypatch.setattr(CommonGenTask, "default_learner", str(tmp_path / "t5-base-offline"))
    monkeypatch.setenv("RLGF_CACHE_DIR", str(tmp_path / "cache"))
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    data = _commongen_file(tmp_path / "test-only.jsonl")
    report = tmp_path / "eval.json"
    with served(tiny_causal_dir, "tiny") as server:
        result = _eval("--task", "commongen", "--policy", "openai:tiny", "--policy-base-url", server.url,
                       "--data", str(data), "--max-new-tokens", "4", "--json", str(report))
    assert result.exit_code == 0, result.output
    out = json.loads(report.read_text())
    (res,) = out["results"]
    assert res["n"] == 3 and {"bleu4", "cider_d", "rouge_l"} <= set(res["metrics"])
    assert "reference_model" not in out["task_info"]  # commongen has no output_perplexity to load one for
    assert out["task_info"]["splits"] == {"train": 0, "val": 3, "test": 3}


# -- 3. evaluation needs no train split; training does ------------------------------------------


def test_commongen_test_rows_evaluate_but_do_not_train(tmp_path, tiny_seq2seq_dir):
    from tasks.commongen import CommonGenTask

    data = _commongen_file(tmp_path / "test-only.jsonl")
    report = tmp_path / "eval.json"
    result = _eval("--task", "commongen", "--data", str(data), "--policy", str(tiny_seq2seq_dir),
                   "--limit", "2", "--json", str(report))
    assert result.exit_code == 0, result.output
    assert json.loads(report.read_text())["results"][0]["n"] == 2

    CommonGenTask(data=data, reward="bleu4").check_reward()  # BLEU-4 needs no train rows…
    with pytest.raises(RlgfError, match="has no train concept sets with targets .*idf"):
        CommonGenTask(data=data, reward="cider_d").check_reward()  # …CIDEr-D's idf does
    with pytest.raises(RlgfError, match="has no train concept sets with targets"):
        CommonGenTask(data=data, reward="bleu4").bc_examples()
    for alg, reward in (("ppo", "cider_d"), ("ppo", "bleu4"), ("bc", "cider_d")):
        out = tmp_path / f"run-{alg}-{reward}"
        line = _error(runner.invoke(app, [
            "train", "--task", "commongen", "--alg", alg, "--data", str(data), "--reward", reward,
            "--learner", str(tiny_seq2seq_dir), "--out", str(out), "--iterations", "1", "--episodes", "2",
            "--device", "cpu", "--quiet",
        ]))  # fmt: skip
        assert f"{data} has no train concept sets with targets" in line and '"split": "train"' in line
        assert not out.exists()


def test_commongen_file_without_test_rows_still_trains_and_says_what_is_missing(tmp_path):
    from tasks.commongen import CommonGenTask

    data = _commongen_file(tmp_path / "train-only.jsonl", split="train")
    task = CommonGenTask(data=data, reward="cider_d")
    task.check_reward()
    assert len(task.examples("train")) == 3
    with pytest.raises(RlgfError, match="has no test concept sets with targets"):
        task.examples("test")


def test_imdb_test_rows_evaluate_but_do_not_train(tmp_path, tiny_causal_dir, tiny_reward_dir):
    from tasks.imdb import ImdbTask

    data = tmp_path / "imdb-test.jsonl"
    texts = ["a wonderful film with a story that moved me to tears", "a dull and lifeless remake of a good film",
             "funny warm and surprisingly deep comedy for everyone"]
    data.write_text("".join(json.dumps({"text": t, "label": i % 2, "split": "test"}) + "\n" for i, t in enumerate(texts)))
    task = ImdbTask(data=data, reward_model=tiny_reward_dir)
    assert len(task.examples("test")) == 3
    with pytest.raises(RlgfError, match=r"the train split of the IMDB data is empty \(0 training reviews\)"):
        task.examples("train")
    report = tmp_path / "eval.json"
    result = _eval("--task", "imdb", "--data", str(data), "--reward-model", str(tiny_reward_dir),
                   "--policy", str(tiny_causal_dir), "--reference", "none", "--max-new-tokens", "4",
                   "--json", str(report))
    assert result.exit_code == 0, result.output
    assert json.loads(report.read_text())["results"][0]["n"] == 3
    out = tmp_path / "run"
    line = _error(runner.invoke(app, [
        "train", "--task", "imdb", "--data", str(data), "--reward-model", str(tiny_reward_dir),
        "--learner", str(tiny_causal_dir), "--out", str(out), "--episodes", "2", "--device", "cpu", "--quiet",
    ]))  # fmt: skip
    assert "the train split of the IMDB data is empty" in line and not out.exists()


# -- 4. final/ is what a user ships; the resumable state stays in checkpoints/ --------------------


def test_final_ships_the_model_and_a_save_every_0_run_still_resumes_and_extends(tmp_path, tiny_causal_dir,
                                                                                 tiny_reward_dir):
    from rlgf_cli.training.checkpoint import folder_bytes

    out = tmp_path / "run"
    args = ["train", "--learner", str(tiny_causal_dir), "--reward-model", str(tiny_reward_dir), "--out", str(out),
            "--iterations", "2", "--episodes", "4", "--epochs", "1", "--max-new-tokens", "4", "--device", "cpu",
            "--quiet", "--lr", "1e-3", "--save-every", "0"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    final = out / "final"
    names = {p.name for p in final.iterdir()}
    assert {"config.json", "model.safetensors", "critic", "rlgf.toml"} <= names
    assert not {n for n in names if n.startswith(("optimizer", "rng"))}, names
    weights = (final / "model.safetensors").stat().st_size + folder_bytes(final / "critic")
    assert folder_bytes(final) < weights + 2**20, "final/ holds the model, tokenizer, configs and critic only"
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["iter-0002"], "the last iteration stays resumable"
    before = (final / "model.safetensors").read_bytes()

    result = runner.invoke(app, ["train", "--resume", str(out), "--iterations", "3", "--quiet"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2, 3]
    assert json.loads((final / "trainer_state.json").read_text())["iteration"] == 3
    assert (final / "model.safetensors").read_bytes() != before, "final/ holds the extended run"
    assert sorted(p.name for p in (out / "checkpoints").iterdir())[-1] == "iter-0003"
    assert not list(out.rglob(".tmp-*"))


# -- a bad model spec fails before the task's reward is prepared ---------------------------------


@pytest.mark.parametrize("flag", ["--learner", "--init", "--guide"])
def test_a_bad_spec_fails_before_the_reward_is_prepared(tmp_path, monkeypatch, flag):
    """The embedded reward trains for minutes the first time: a typo in a spec must not wait for it."""
    from tasks.rotten_tomatoes import RottenTomatoesTask

    def never(self):
        raise AssertionError("the reward was prepared before the specs were checked")

    monkeypatch.setattr(RottenTomatoesTask, "check_reward", never)
    args = ["train", "--task", "rotten-tomatoes", "--alg", "ppo++", "--guide", "smollm2", flag, "./no/such/folder",
            "--out", str(tmp_path / "run"), "--device", "cpu"]
    line = _error(runner.invoke(app, args))
    assert "no such folder: ./no/such/folder" in line
    assert not (tmp_path / "run").exists()


# -- 5. errors that name what the user typed, and advice that fits the command ---------------------


def test_a_damaged_final_folder_points_at_the_last_checkpoint(tmp_path):
    from rlgf_cli.training.checkpoint import read_state

    for name in ("final", "iter-0003"):
        folder = tmp_path / "run" / name
        folder.mkdir(parents=True)
        (folder / "trainer_state.json").write_text("[1, 2]", encoding="utf-8")
        with pytest.raises(RlgfError, match="is damaged") as info:
            read_state(folder)
        if name == "final":  # eval and --init read final/: --overwrite is no option of theirs
            assert "last checkpoint" in info.value.hint and "--overwrite" not in info.value.hint
            assert str(tmp_path / "run" / "checkpoints") in info.value.hint
        else:
            assert "delete that folder" in info.value.hint


def test_distill_names_the_flag_that_was_typed():
    line = _error(runner.invoke(app, ["distill", "--guide", "hf:x", "--guide-concurrency", "0"]))
    assert "--guide-concurrency must be >= 1" in line, line


def test_rotten_tomatoes_names_its_min_new_tokens_flag():
    from tasks.rotten_tomatoes import RottenTomatoesTask

    with pytest.raises(RlgfError, match="--min-new-tokens must be between 0 and --max-new-tokens") as info:
        RottenTomatoesTask(max_new_tokens=8, min_new_tokens=100)
    assert "raise --max-new-tokens" in info.value.hint


def test_a_result_table_in_a_pipe_keeps_its_natural_width(capsys, monkeypatch):
    from rlgf_cli.commands.console import print_result_table

    monkeypatch.delenv("COLUMNS", raising=False)
    cells = ["learner + BC (temperature 0.7)", "0.612 ± 0.021", "13.402 ± 1.250", "0.281 ± 0.010", "3.1 ± 0.2"]
    print_result_table("a title", ["method", "reward", "output_perplexity", "rouge_l", "length"], [cells] * 2)
    lines = capsys.readouterr().out.splitlines()
    assert any("output_perplexity" in x for x in lines), lines  # not "output_perple / xity"
    assert sum(all(c in x for c in cells) for x in lines) == 2, lines  # every row on one line
    assert max(map(len, lines)) > 80


def test_file_errors_say_what_to_do(tmp_path):
    from tasks.custom_reward import load_custom_reward
    from tasks.jsonl import iter_jsonl
    from tasks.table_rows import parquet_rows

    with pytest.raises(RlgfError, match="file not found") as missing:
        load_custom_reward(f"{tmp_path / 'nope.py'}:reward")
    assert "path/to/file.py:function" in missing.value.hint
    broken = tmp_path / "broken.py"
    broken.write_text("def reward(prompts, completions, references)\n    return []\n", encoding="utf-8")
    with pytest.raises(RlgfError, match="SyntaxError") as syntax:
        load_custom_reward(f"{broken}:reward")
    assert f"python {broken} shows the full error" in syntax.value.hint
    with pytest.raises(RlgfError, match="data file not found") as data:
        list(iter_jsonl(tmp_path / "nope.jsonl", "rows", "a hint"))
    assert "--data" in data.value.hint
    pytest.importorskip("pyarrow")
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet at all")
    with pytest.raises(RlgfError, match="not a readable Parquet file") as parquet:
        list(parquet_rows(bad))
    assert "JSONL or CSV" in parquet.value.hint


def test_a_reward_label_out_of_range_lists_the_classes():
    from transformers import PretrainedConfig

    from tasks.scoring.model_reward import pick_label

    config = PretrainedConfig(num_labels=2, id2label={0: "negative", 1: "positive"})
    with pytest.raises(RlgfError, match=r"--reward-label 7 is not a class of the reward model \(0 … 1\)") as info:
        pick_label(config, "7")
    assert info.value.hint == "its classes: 0=negative, 1=positive"


# -- a chat guide's messages given where nothing reads them ----------------------------------------


def _spec_warnings(cfg) -> list[str]:
    import warnings

    from rlgf_cli.training.run import check_specs

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_specs(cfg, None, learner=None, guide=cfg.algorithm.needs_guide)
    return [str(w.message) for w in caught]


def test_guide_messages_a_guide_does_not_read_are_named(tmp_path, tiny_causal_dir, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-0123456789abcdef")
    local = build_config(alg="ppo++", guide=str(tiny_causal_dir), guide_instruction="Go on: {prompt}",
                         guide_prefill="continue", out=str(tmp_path / "a"))
    assert _spec_warnings(local) == [f"--guide-instruction, --guide-prefill ignored: guide {tiny_causal_dir} is not a "
                                     "chat API model (openai-chat:…)"]
    chat = build_config(alg="ppo++", guide="openai-chat:gpt-4o-mini", guide_instruction="Go on: {prompt}",
                        guide_system="Be brief.", out=str(tmp_path / "b"))
    assert _spec_warnings(chat) == []
    unguided = build_config(alg="ppo", guide_system="Be brief.", out=str(tmp_path / "c"))
    assert _spec_warnings(unguided) == ["--guide-system ignored: there is no --guide"]
    unused = build_config(alg="ppo", guide="openai-chat:gpt-4o-mini", guide_system="Be brief.", out=str(tmp_path / "d"))
    assert _spec_warnings(unused) == ["--guide-system ignored: --alg ppo uses no guide"]
    plain = build_config(alg="ppo++", guide=str(tiny_causal_dir), out=str(tmp_path / "e"))
    assert _spec_warnings(plain) == []

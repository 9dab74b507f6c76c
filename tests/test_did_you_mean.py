"""One "did you mean …?" helper: the phrase itself, and every kind of name suggesting through it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from backends.errors import RlgfError, did_you_mean, with_suggestion

ROOT = Path(__file__).resolve().parents[1]


def test_the_phrase():
    assert did_you_mean("ppx", ["ppo", "bc", "lols"]) == "did you mean 'ppo'? "
    assert did_you_mean("hff", ["hf", "hff2", "openai"]) == "did you mean 'hff2' or 'hf'? "  # closest first
    assert did_you_mean("ppo++x", ["ppo", "ppo++", "bc"], n=1) == "did you mean 'ppo++'? "
    assert did_you_mean("zzz", ["ppo", "bc"]) == ""
    assert did_you_mean("x", []) == ""


def test_cutoff_decides_how_alike_a_name_must_be():
    # "imbd" and "imdb" are 0.75 alike: suggested at the default cutoff, not at a stricter one
    assert did_you_mean("imbd", ["imdb"]) == "did you mean 'imdb'? "
    assert did_you_mean("imbd", ["imdb"], cutoff=0.9) == ""


def test_with_suggestion_appends_to_a_message():
    assert with_suggestion("unknown task 'imbd'", "imbd", ["imdb", "commongen"]) == "unknown task 'imbd'; did you mean 'imdb'?"
    assert with_suggestion("unknown task 'zzz'", "zzz", ["imdb"]) == "unknown task 'zzz'"


def test_library_names_suggest_through_it():
    from backends.registry import resolve
    from tasks.registry import get_task, task_class

    with pytest.raises(RlgfError) as err:
        task_class("imbd")
    assert err.value.message == "unknown task 'imbd'; did you mean 'imdb'?"
    with pytest.raises(RlgfError) as err:
        get_task("imdb", max_new_token=3)
    assert err.value.message == "task imdb has no option 'max_new_token'; did you mean 'max_new_tokens'?"
    with pytest.raises(RlgfError) as err:
        resolve("opnai:gpt-4o")
    assert err.value.hint.startswith("did you mean 'openai' or 'openai-chat'? known backends: ")


def test_algorithm_and_config_keys_suggest_through_it(tmp_path):
    from rlgf_cli.training.config import load_toml, normalise_alg

    with pytest.raises(RlgfError) as err:
        normalise_alg("agrevated")
    assert err.value.message == "unknown algorithm 'agrevated'" and err.value.hint.startswith("did you mean 'aggrevated'? ")
    typo = tmp_path / "typo.toml"
    typo.write_text("[train]\nepisode = 4\n")
    with pytest.raises(RlgfError) as err:
        load_toml(typo)
    assert err.value.hint == "did you mean 'episodes'?"
    far = tmp_path / "far.toml"
    far.write_text("zzzzzz = 4\n")
    with pytest.raises(RlgfError) as err:
        load_toml(far)
    assert err.value.hint.startswith("known keys: ")


def test_metric_names_suggest_through_it(tmp_path):
    from rlgf_cli.evaluation.difficulty import plot

    report = {"buckets": {"easy": {"n": 1, "policies": {"p": {"sentiment": 0.5, "perplexity": 9.0}}}}}
    with pytest.raises(RlgfError) as err:
        plot(report, tmp_path / "fig.png", metric="sentimnt")
    assert err.value.message == "no metric 'sentimnt' to plot"
    assert err.value.hint.startswith("did you mean 'sentiment'? choose one of: ") and not (tmp_path / "fig.png").exists()


def rlgf(*args, cwd):
    env = {k: v for k, v in os.environ.items() if k != "RLGF_DEBUG"}
    return subprocess.run([sys.executable, "-m", "rlgf_cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=120)


@pytest.mark.parametrize(
    "args, suggestion",
    [
        (["--task", "comongen"], "unknown task 'comongen'; did you mean 'commongen'?"),
        (["--alg", "d2lol"], "unknown algorithm 'd2lol' — did you mean 'd2lols'? choose one of:"),
        (["--learner", "hff:gpt2"], "unknown backend 'hff' — did you mean 'hf'? known backends:"),
        (["--config", "typo.toml"], "— did you mean 'episodes'?"),
    ],
)
def test_the_cli_prints_the_suggestion(tmp_path, args, suggestion):
    (tmp_path / "typo.toml").write_text("episode = 4\n")
    proc = rlgf("train", *args, "--device", "cpu", "--out", str(tmp_path / "run"), cwd=tmp_path)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("[error] ")]
    assert proc.returncode == 1 and len(errors) == 1, proc.stderr
    assert suggestion in errors[0]
    assert not (tmp_path / "run").exists()

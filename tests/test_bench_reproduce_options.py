"""bench/reproduce.py's options, its learning-rate rule and its scheduler, without training anything:
usage errors, --row-option, how two runs' settings compare, --lr-per-row's choices and their order."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_lr_rule_refuses_drift_from_the_reference(tmp_path):
    import argparse

    sys.path.insert(0, str(ROOT / "bench"))
    from reproduce import choose_lr

    args = argparse.Namespace(max_approx_kl=0.1, max_kl_per_token=0.1)
    trials = [{"lr": 5e-5, "val": {"sentiment": 0.612}, "approx_kl_mean": 0.0003, "kl_exact_last": 0.05},
              {"lr": 2e-4, "val": {"sentiment": 0.622}, "approx_kl_mean": 0.0045, "kl_exact_last": 0.31}]
    assert choose_lr(args, trials, tmp_path)["chosen"] == 5e-5  # the better val score drifted too far
    args.max_kl_per_token = 1.0
    assert choose_lr(args, trials, tmp_path)["chosen"] == 2e-4
    args.max_kl_per_token = 0.01  # none is healthy: the best of all
    assert choose_lr(args, trials, tmp_path)["chosen"] == 2e-4


@pytest.mark.parametrize("bad, message", [(["--seeds", "0"], "--seeds must be at least 1"),
                                          (["--lr-grid", "1e-5,abc"], "--lr-grid takes positive numbers"),
                                          (["--from", "x"], "--from joins finished folders"),
                                          (["--lr", "5e-5", "--lr-grid", "1e-5,1e-4"], "not both"),
                                          (["--row-option", "whiten=false"], "a setting of `rlgf train`"),
                                          (["--row-option", "lr=1e-3"], "the reproduction sets it"),
                                          (["--lr-per-row"], "give --lr-grid too")])
def test_bad_options_are_one_usage_error(tmp_path, bad, message):
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "reproduce.py"), *bad, "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


def test_the_workers_command_drops_a_flag_alone_and_an_option_with_its_value():
    """--jobs N workers get the command less --resume: a flag, so the option after it stays (an
    --out after --resume was dropped with it, and every worker stopped at its first job)."""
    sys.path.insert(0, str(ROOT / "bench"))
    import reproduce

    argv = ["--resume", "--out", "X", "--lr", "1e-5", "--threads=2", "--all-rows", "--jobs", "2"]
    assert reproduce._without(argv, "--resume") == argv[1:]
    assert reproduce._without(argv, "--lr", "--threads", "--jobs", "--resume") == ["--out", "X", "--all-rows"]
    assert reproduce.parse_args(reproduce._without(argv, "--resume", "--lr")).out == "X"
    with pytest.raises(SystemExit):  # an abbreviation would escape _without: refused
        reproduce.parse_args(["--res", "--out", "X"])


def test_row_options_are_read_as_toml_and_may_change_the_presets_minibatches():
    sys.path.insert(0, str(ROOT / "bench"))
    import reproduce

    args = reproduce.parse_args(["--episodes", "16", "--row-option", "minibatch_size=16", "--row-option",
                                 "whiten-advantages=false", "--row-option", "lr_schedule=linear"])
    assert reproduce.row_options(args) == {"minibatch_size": 16, "whiten_advantages": False, "lr_schedule": "linear"}
    with pytest.raises(SystemExit):  # more than an iteration's episodes: refused before anything runs
        reproduce.parse_args(["--episodes", "8", "--row-option", "minibatch_size=16"])
    # how two runs' settings are compared: an option an older settings.json lacks reads as its default
    # (None), and row options as the settings they name, whatever their order and spelling
    old = reproduce.comparable({"preset": "cpu"})
    assert old["aggrevated_advantage"] is None and old["row_option"] is None and "preset" in old
    a = reproduce.comparable({"row_option": ["whiten-advantages=false", "clip_range=0.1"]})
    b = reproduce.comparable({"row_option": ["clip_range=0.1", "whiten_advantages=false"]})
    assert a["row_option"] == b["row_option"] == {"whiten_advantages": False, "clip_range": 0.1}


def test_a_folder_from_before_an_option_is_not_a_replicate_of_one_run_with_it(tmp_path):
    sys.path.insert(0, str(ROOT / "bench"))
    from reproduce_jobs import experiment_of

    old, new = tmp_path / "old", tmp_path / "new"
    for folder, extra in ((old, {}), (new, {"aggrevated_advantage": "gae"})):
        folder.mkdir()
        (folder / "settings.json").write_text(json.dumps({"preset": "cpu", "task": "prompts", **extra}))
    assert experiment_of(old)["aggrevated_advantage"] is None
    assert experiment_of(new)["aggrevated_advantage"] == "gae"  # so --collect refuses to join them


def test_lr_per_row_scheduling_gives_each_row_its_own_rate_once_its_trials_end(tmp_path, monkeypatch):
    """The scheduler alone (the jobs faked): each row's trials end before its seeds start, the choice
    is asked for once per row, and each row's jobs get that row's rate, not another row's."""
    import argparse

    sys.path.insert(0, str(ROOT / "bench"))
    import reproduce_jobs as J

    rows = [("ppo", "ppo", False), ("BC+aggrevated", "aggrevated", True)]
    args = argparse.Namespace(lr_grid="1e-5,1e-4", lr_per_row=True, seeds=2, first_seed=0, jobs=1, threads=1)
    jobs = J.plan(args, rows)
    trials = [j for j in jobs if j.kind == "lr"]
    assert sorted(j.name for j in trials) == ["lr-BC_aggrevated-0.0001", "lr-BC_aggrevated-1e-05", "lr-ppo-0.0001",
                                              "lr-ppo-1e-05"]
    assert all(("guide" in j.needs) == (j.label == "BC+aggrevated") for j in trials)  # the warm row's need the guide
    ran, asked = [], []
    monkeypatch.setattr(J, "run_job", lambda job, a, out, lr: ran.append((job.name, lr)) or {"lr": job.lr})
    own = {"ppo": 1e-5, "BC+aggrevated": 1e-4}

    def on_lr_trials(results, label):
        asked.append((label, sorted(r["lr"] for r in results)))
        return own[label]

    done = J.schedule(jobs, args, tmp_path, [], on_lr_trials)
    assert set(done) == {j.name for j in jobs}
    assert sorted(asked) == [("BC+aggrevated", [1e-5, 1e-4]), ("ppo", [1e-5, 1e-4])]
    order = [name for name, _ in ran]
    for job in (j for j in jobs if j.kind == "row"):
        assert dict(ran)[job.name] == own[job.label]
        mine = [t.name for t in trials if t.label == job.label]
        assert max(order.index(t) for t in mine) < order.index(job.name)


def test_per_row_choices_of_replicates_are_joined_row_by_row(tmp_path):
    sys.path.insert(0, str(ROOT / "bench"))
    import reproduce as R

    for name, rows in (("a", {"ppo": 1e-5}), ("b", {"ppo": 1e-5, "BC+ppo": 5e-5})):
        folder = tmp_path / name / "lr-selection"
        folder.mkdir(parents=True)
        (folder / "lr_choice.json").write_text(json.dumps(
            {"metric": "reward", "per_row": {k: {"chosen": v, "trials": []} for k, v in rows.items()}, "chosen": rows}))
    joined = R.lr_choices([tmp_path / "a", tmp_path / "b"])
    assert joined["chosen"] == {"ppo": 1e-5, "BC+ppo": 5e-5} and set(joined["per_row"]) == {"ppo", "BC+ppo"}
    shared = R.lr_choices([tmp_path / "a"])
    assert shared["chosen"] == {"ppo": 1e-5}
    assert R.lr_choices([tmp_path / "none"]) is None

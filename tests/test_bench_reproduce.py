"""bench/reproduce.py at its tiny preset: every row over two seeds, the table, the curves PNG."""

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_reproduce_tiny(tmp_path, tiny_causal_dir, tiny_reward_dir):
    out = tmp_path / "repro"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "reproduce.py"), "--preset", "tiny", "--learner", str(tiny_causal_dir),
         "--reward-model", str(tiny_reward_dir), "--seeds", "2", "--iterations", "2", "--episodes", "4",
         "--eval-limit", "4", "--device", "cpu", "--lr-grid", "1e-5,1e-4", "--jobs", "2", "--out", str(out)],
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((out / "results.json").read_text())
    rows = data["table"]
    expected = {"initial learner", "BC (guide)", "ppo", "ppo++", "aggrevated", "lols", "d2lols", "BC+ppo", "BC+ppo++"}
    assert set(rows) == expected
    for row in rows.values():
        assert set(row) == {"sentiment", "perplexity", "output_perplexity"}
        assert all(cell["n"] == 2 and cell["std"] >= 0 for cell in row.values())
    # the lr was chosen on the validation split, among the grid
    assert data["lr_choice"]["chosen"] in (1e-5, 1e-4) and len(data["lr_choice"]["trials"]) == 2
    assert data["settings"]["lr"] == data["lr_choice"]["chosen"]
    # learning curves: one per trained row, two seeds each, two iterations
    curves = data["curves"]
    assert set(curves) == expected - {"initial learner", "BC (guide)"}
    assert all(c["iterations"] == [1, 2] and c["seeds"] == [2, 2] for c in curves.values())
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "results.md").read_text()
    assert "| BC+ppo++ |" in md and "±" in md and "Ordering (sentiment)" in md and "wall time" in md
    assert "- RL rows (training + evaluation): 14 jobs" in md
    assert "- evaluation of the initial learner and the guide: 2 jobs" in md
    # the models are dropped after evaluation (metrics and configs stay)
    assert not (out / "seed0" / "ppo" / "final").exists() and (out / "seed0" / "ppo" / "metrics.jsonl").is_file()
    # one guide for every seed; every job left its result file; the guide's model is dropped at the end
    assert (out / "guide" / "metrics.jsonl").is_file() and not (out / "seed0" / "bc").exists()
    assert not (out / "guide" / "final").exists()
    # (guide, 2 lr trials, 7 rows per seed, one evaluation job each for the initial learner and the
    # guide, the test prompts' difficulty)
    assert len(list((out / "jobs").glob("*.json"))) == 1 + 2 + 2 * 7 + 2 + 1 == len(data["job_seconds"])
    # by prompt difficulty: each row's reward per prompt, whose mean is the row's sentiment at that seed
    by = data["difficulty"]
    assert len(by["prompts"]["values"]) == 4 and set(by["prompts"]["buckets"]) <= {"easy", "medium", "hard"}
    easiest = max(range(4), key=lambda i: by["prompts"]["values"][i])
    assert by["prompts"]["buckets"][easiest] == "easy"
    for name in ("s0-ppo", "s1-BC_ppo"):
        job = json.loads((out / "jobs" / f"{name}.json").read_text())
        assert len(job["per_prompt"]) == 4
        assert abs(sum(job["per_prompt"]) / 4 - job["metrics"]["sentiment"]) < 1e-6
    guide_job = json.loads((out / "jobs" / "guide-eval.json").read_text())
    assert guide_job["per_prompt"].keys() == {"0", "1"}
    assert by["table"]["rows"].keys() == expected
    assert "vs_ppo" not in by["table"]["rows"]["ppo"]["easy"] and by["table"]["rows"]["ppo++"]["easy"]["vs_ppo"]["n"] == 2
    assert "By prompt difficulty" in md and " easy − PPO | " in md
    assert (out / "difficulty.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # those two are one model each: their reference perplexity is the same at both seeds
    assert rows["initial learner"]["perplexity"]["std"] == 0 == rows["BC (guide)"]["perplexity"]["std"]
    # --jobs 2: two long-lived workers ran all 19 jobs, each job's output in its own log
    pids = {json.loads(f.read_text())["pid"] for f in (out / "jobs").glob("*.json")}
    assert len(pids) == 2
    assert "done in" in (out / "logs" / "s1-lols.log").read_text()
    # the tables can be rebuilt from the job files alone
    again = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "reproduce.py"), "--preset", "tiny", "--learner", str(tiny_causal_dir),
         "--seeds", "2", "--lr-grid", "1e-5,1e-4", "--out", str(out), "--collect"],
        capture_output=True, text=True, timeout=300,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    again_data = json.loads((out / "results.json").read_text())
    assert again_data["table"] == rows
    assert again_data["settings"] == data["settings"]  # labelled with the run's options, not the defaults
    other = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "reproduce.py"), "--preset", "gpu", "--learner", str(tiny_causal_dir),
         "--seeds", "2", "--out", str(out), "--collect"], capture_output=True, text=True, timeout=300)
    assert other.returncode != 0 and "preset was 'tiny', now 'gpu'" in other.stderr
    bare = subprocess.run([sys.executable, str(ROOT / "bench" / "reproduce.py"), "--out", str(out), "--collect"],
                          capture_output=True, text=True, timeout=300)  # the folder lends its options and seeds
    assert bare.returncode == 0, bare.stderr[-3000:]
    assert json.loads((out / "results.json").read_text())["table"] == rows
    # the finished run's own clock and command stay (not the job files' time span)
    assert again_data["wall_s"] == data["wall_s"] and "--jobs 2" in again_data["command"]


def test_a_failed_job_stops_the_reproduction_and_names_its_log(tmp_path, tiny_reward_dir):
    out = tmp_path / "repro"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "reproduce.py"), "--preset", "tiny", "--learner",
         str(tmp_path / "no-such-model"), "--reward-model", str(tiny_reward_dir), "--seeds", "1", "--eval-limit", "4",
         "--device", "cpu", "--jobs", "2", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode != 0
    # With 2 workers, the guide and the unguided PPO run side by side and either may fail first.
    m = re.search(r"job (\S+) failed; see (\S+\.log)", proc.stderr)
    assert m, proc.stderr
    name, log = m.group(1), Path(m.group(2))
    assert log == out / "logs" / f"{name}.log"
    assert "no such folder" in log.read_text()
    assert not (out / "jobs" / f"{name}.json").exists() and not (out / "results.json").exists()


def _replicate(out, first_seed, learner, reward):
    return subprocess.run(
        [sys.executable, str(ROOT / "bench" / "reproduce.py"), "--preset", "tiny", "--learner", str(learner),
         "--reward-model", str(reward), "--seeds", "1", "--first-seed", str(first_seed), "--iterations", "1",
         "--episodes", "4", "--eval-limit", "4", "--device", "cpu", "--jobs", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=900,
    )


def test_a_replicate_at_new_seeds_keeps_the_guide_and_every_row(tmp_path, tiny_causal_dir, tiny_reward_dir):
    """--first-seed 3 --seeds 1: the rows train and evaluate at seed 3 only; the guide and the
    initial learner are scored at that seed too (a single seed once lost them from the table).
    Two replicates join into one table with --collect --from, and only replicates do."""
    out = tmp_path / "repro"
    proc = _replicate(out, 3, tiny_causal_dir, tiny_reward_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((out / "results.json").read_text())
    assert data["first_seed"] == 3 and data["seeds"] == 1
    assert {"initial learner", "BC (guide)", "ppo", "BC+ppo"} <= set(data["table"])
    assert all(cell["n"] == 1 for row in data["table"].values() for cell in row.values())
    assert sorted(p.name for p in out.glob("seed*")) == ["seed3"]
    assert "\nseed = 3\n" in (out / "seed3" / "ppo" / "config.toml").read_text()
    assert json.loads((out / "jobs" / "initial.json").read_text())["per_seed"].keys() == {"3"}
    assert "1 seeds (seed 3)" in (out / "results.md").read_text()

    other = tmp_path / "repro4"
    proc = _replicate(other, 4, tiny_causal_dir, tiny_reward_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    joined = tmp_path / "joined"
    collect = [sys.executable, str(ROOT / "bench" / "reproduce.py"), "--preset", "tiny", "--learner",
               str(tiny_causal_dir), "--seeds", "2", "--first-seed", "3", "--iterations", "1", "--episodes", "4",
               "--eval-limit", "4", "--collect", "--from", str(out), "--from", str(other), "--out", str(joined)]
    proc = subprocess.run(collect, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    both = json.loads((joined / "results.json").read_text())
    seed3 = json.loads((out / "results.json").read_text())["per_seed"][0]
    seed4 = json.loads((other / "results.json").read_text())["per_seed"][0]
    assert both["per_seed"] == [seed3, seed4] and both["seeds_done"] == [3, 4]
    assert all(cell["n"] == 2 for row in both["table"].values() for cell in row.values())
    assert both["curves"]["ppo"]["seeds"] == [2]
    assert "joined from:" in (joined / "results.md").read_text()
    assert both["wall_s"] == data["wall_s"] + json.loads((other / "results.json").read_text())["wall_s"]
    # a folder given twice, or a copy of one (evaluations copied between folders), adds its wall time once
    shutil.copytree(other, tmp_path / "repro4-copy")
    proc = subprocess.run([*collect[:-1], str(tmp_path / "joined-copies"), "--from", str(other), "--from",
                           str(tmp_path / "repro4-copy")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    copies = json.loads((tmp_path / "joined-copies" / "results.json").read_text())
    assert copies["table"] == both["table"] and copies["wall_s"] == both["wall_s"]
    assert "(the folders' own, summed; 2 duplicate folders counted once)" in (
        tmp_path / "joined-copies" / "results.md").read_text()
    # the rewards per prompt join too: every row's difficulty cells cover both seeds
    cells = [c for row in both["difficulty"]["table"]["rows"].values() for c in row.values()]
    assert cells and all(c["n"] == 2 for c in cells)
    # a folder run with another reward model is not a replicate, whatever its preset numbers say
    other_reward = tmp_path / "repro4-other-reward"
    shutil.copytree(other, other_reward)
    chosen = json.loads((other_reward / "settings.json").read_text())
    (other_reward / "settings.json").write_text(json.dumps({**chosen, "reward_model": "another/reward"}))
    refused = subprocess.run([*collect[:-6], "--from", str(out), "--from", str(other_reward), "--out",
                              str(tmp_path / "joined-bad")], capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0 and "not replicates: their reward_model differ" in refused.stderr
    # two folders holding the same seed's row with other results are not replicates at other seeds
    rerun = tmp_path / "repro4-again"
    shutil.copytree(other, rerun)
    row = next(p for p in (rerun / "jobs").glob("s4-*.json") if "metrics" in json.loads(p.read_text()))
    result = json.loads(row.read_text())
    row.write_text(json.dumps({**result, "metrics": {k: 0.0 for k in result["metrics"]}}))
    clash = subprocess.run([*collect[:-6], "--from", str(other), "--from", str(rerun), "--out",
                            str(tmp_path / "joined-clash")], capture_output=True, text=True, timeout=300)
    assert clash.returncode != 0 and "at seed 4 too, with other results" in clash.stderr
    # not replicates: other settings, or another guide
    data = json.loads((other / "results.json").read_text())
    (other / "results.json").write_text(json.dumps({**data, "settings": {**data["settings"], "episodes": 8}}))
    proc = subprocess.run(collect, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "not replicates: their settings differ" in proc.stderr
    (other / "results.json").write_text(json.dumps(data))
    trace = other / "guide" / "metrics.jsonl"
    trace.write_text(trace.read_text().replace('"bc_loss": ', '"bc_loss": 1', 1))
    proc = subprocess.run(collect, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "their guides trained differently" in proc.stderr


def test_the_ordering_pairs_rows_seed_by_seed():
    sys.path.insert(0, str(ROOT / "bench"))
    from reproduce_report import aggregate, ordering, paired

    per_seed = [{"BC (guide)": {"s": 0.70}, "BC+ppo": {"s": 0.75}, "ppo": {"s": 0.66}},
                {"BC (guide)": {"s": 0.68}, "BC+ppo": {"s": 0.74}, "ppo": {"s": 0.69}},
                {"BC (guide)": {"s": 0.72}, "BC+ppo": {"s": 0.76}, "ppo": {"s": 0.70}}]
    p = paired(per_seed, "BC (guide)", "BC+ppo", "s")
    assert p["n"] == 3 and p["ahead"] == 3 and abs(p["mean"] - 0.05) < 1e-9
    assert abs(p["se"] - 0.01 / 3 ** 0.5) < 1e-9  # diffs 0.05, 0.06, 0.04: std 0.01
    assert paired(per_seed, "BC (guide)", "ppo", "s")["ahead"] == 1
    lines = ordering(aggregate(per_seed), "s", per_seed)
    assert "BC (guide) < ppo: does NOT hold (0.700 vs 0.683; ppo − BC (guide) seed by seed -0.017" in lines[0]
    assert "ppo ahead at 1 of 3 seeds" in lines[0]
    assert lines[-1] == "BC+ppo − BC (guide) seed by seed +0.050 ± 0.006 s.e., BC+ppo ahead at 3 of 3 seeds"
    # rows started from the guide's weights are compared with BC+PPO, as the cold ones with PPO
    for run, value in zip(per_seed, (0.74, 0.78, 0.79)):
        run["BC+d2lols"] = {"s": value}
    lines = ordering(aggregate(per_seed), "s", per_seed)
    assert any(line.startswith("BC+ppo < BC+d2lols: holds (0.750 vs 0.770; BC+d2lols − BC+ppo seed by seed +0.020")
               and "ahead at 2 of 3 seeds" in line for line in lines), lines
    assert not any(line.startswith("BC+ppo < BC+ppo++") for line in lines)  # only rows that ran


def test_resume_keeps_the_finished_jobs_and_refuses_other_settings(tmp_path, tiny_causal_dir, tiny_reward_dir):
    out = tmp_path / "repro"

    def run(*extra):
        return subprocess.run(
            [sys.executable, str(ROOT / "bench" / "reproduce.py"), "--preset", "tiny", "--learner", str(tiny_causal_dir),
             "--reward-model", str(tiny_reward_dir), "--seeds", "1", "--iterations", "1", "--episodes", "4",
             "--eval-limit", "4", "--device", "cpu", "--jobs", "1", "--out", str(out), *extra],
            capture_output=True, text=True, timeout=900,
        )

    first = run()
    assert first.returncode == 0, first.stderr[-3000:]
    before = {p.name: json.loads(p.read_text()) for p in (out / "jobs").glob("*.json")}
    # as if the process had been killed during the PPO row: its result file and model are missing,
    # and the guide's model is still there (a finished run drops it)
    (out / "jobs" / "s0-ppo.json").unlink()
    (out / "guide" / "final").mkdir()
    again = run("--resume")
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"{len(before) - 1} kept from the interrupted run" in again.stdout
    after = {p.name: json.loads(p.read_text()) for p in (out / "jobs").glob("*.json")}
    assert set(after) == set(before)
    rerun = {name for name in after if after[name]["pid"] != before[name]["pid"]}
    assert rerun == {"s0-ppo.json"}  # only the lost job ran again
    assert after["s0-ppo.json"]["metrics"] == before["s0-ppo.json"]["metrics"]  # and gave the same result
    assert "jobs were kept from the interrupted run" in (out / "results.md").read_text()
    refused = run("--resume", "--episodes", "8")
    assert refused.returncode != 0 and "episodes was 4, now 8" in refused.stderr
    # without --resume, the folder's results are not taken for a new run's
    fresh = run("--episodes", "8")
    assert fresh.returncode != 0 and "pass --resume to continue it" in fresh.stderr
    # more seeds on resume: the initial learner and the guide are evaluated at the new seed too
    more = run("--resume", "--seeds", "2")
    assert more.returncode == 0, more.stderr[-3000:]
    for name in ("initial", "guide-eval"):
        assert set(json.loads((out / "jobs" / f"{name}.json").read_text())["per_seed"]) == {"0", "1"}


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_lr_per_row_chooses_each_rows_rate_on_its_own_validation_trials(tmp_path, tiny_causal_dir, tiny_reward_dir,
                                                                       jobs):
    """``--lr-per-row``: each row is trained at every rate of the grid (seed 1000) and scored on the
    validation split, and its seeds train at the rate its own trials chose."""
    out = tmp_path / "per-row"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "reproduce.py"), "--preset", "tiny", "--learner", str(tiny_causal_dir),
         "--reward-model", str(tiny_reward_dir), "--seeds", "1", "--iterations", "1", "--episodes", "4",
         "--eval-limit", "4", "--device", "cpu", "--rows", "ppo,BC+aggrevated", "--lr-grid", "1e-5,3e-4",
         "--lr-per-row", "--row-option", "clip_range=0.1", "--jobs", jobs, "--out", str(out)],
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    choice = json.loads((out / "lr-selection" / "lr_choice.json").read_text())
    assert set(choice["per_row"]) == set(choice["chosen"]) == {"ppo", "BC+aggrevated"}
    for label, row in choice["per_row"].items():
        assert [t["lr"] for t in row["trials"]] == [1e-5, 3e-4]
        healthy = [t for t in row["trials"] if t["approx_kl_mean"] <= 0.1 and (t["kl_exact_last"] or 0) <= 0.1]
        best = max(healthy or row["trials"], key=lambda t: t["val"][choice["metric"]])
        assert choice["chosen"][label] == row["chosen"] == best["lr"]
    # the trials are the rows themselves: AggreVaTeD from the guide's weights, with the row options
    trial = tomllib.loads((out / "lr-selection" / "BC_aggrevated-lr0.0003" / "config.toml").read_text())["train"]
    assert trial["alg"] == "aggrevated" and trial["seed"] == 1000 and trial["lr"] == 3e-4
    assert trial["init"] == trial["guide"] and Path(trial["guide"]).parts[-2:] == ("guide", "final")
    assert trial["clip_range"] == 0.1
    assert tomllib.loads((out / "lr-selection" / "ppo-lr1e-05" / "config.toml").read_text())["train"]["alg"] == "ppo"
    # each row's seed trained at its own rate
    for label, folder in (("ppo", "ppo"), ("BC+aggrevated", "BC_aggrevated")):
        config = tomllib.loads((out / "seed0" / folder / "config.toml").read_text())["train"]
        assert config["lr"] == choice["chosen"][label]
    data = json.loads((out / "results.json").read_text())
    assert data["lr_choice"]["chosen"] == choice["chosen"] and data["settings"]["lr"] is None
    md = (out / "results.md").read_text()
    assert "Learning rate chosen on the validation split for each row" in md
    assert f"- BC+aggrevated: lr 1e-05: val " in md and f"— chosen {choice['chosen']['BC+aggrevated']:g}" in md
    assert "the RL rows and their lr trials only" in md
    # a resume without the flag is another experiment
    again = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "reproduce.py"), "--preset", "tiny", "--learner", str(tiny_causal_dir),
         "--reward-model", str(tiny_reward_dir), "--seeds", "1", "--iterations", "1", "--episodes", "4",
         "--eval-limit", "4", "--device", "cpu", "--rows", "ppo,BC+aggrevated", "--lr-grid", "1e-5,3e-4",
         "--row-option", "clip_range=0.1", "--resume", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert again.returncode != 0 and "lr_per_row was True, now False" in again.stderr


def test_a_given_guide_and_chosen_rows(tmp_path, tiny_causal_dir, tiny_reward_dir):
    """``--guide-model DIR`` guides the rows with that model (no BC is trained) and labels it
    'guide'; ``--rows`` trains only the rows named."""
    out = tmp_path / "given"
    shutil.copytree(tiny_causal_dir, tmp_path / "strong")  # the guide, inside the folder the run starts in
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "reproduce.py"), "--preset", "tiny", "--learner", str(tiny_causal_dir),
         "--reward-model", str(tiny_reward_dir), "--seeds", "1", "--iterations", "1", "--episodes", "4",
         "--eval-limit", "4", "--device", "cpu", "--rows", "ppo,ppo++,aggrevated", "--guide-model", "strong",
         "--beta", "0.5", "--aggrevated-advantage", "gae", "--row-option", "whiten_advantages=false",
         "--row-option", "clip-range=0.1", "--out", "given"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((out / "results.json").read_text())
    assert set(data["table"]) == {"initial learner", "guide", "ppo", "ppo++", "aggrevated"}
    assert not (out / "guide").exists(), "no BC guide was trained"
    config = (out / "seed0" / "ppo__" / "config.toml").read_text()
    assert 'guide = "strong"' in config  # the given model guided PPO++, named relative to where the run started
    assert re.search(r"^beta = 0.5$", config, re.M)  # --beta reaches the guided row…
    assert not re.search(r"^beta = ", (out / "seed0" / "ppo" / "config.toml").read_text(), re.M)  # …and not PPO
    # --aggrevated-advantage reaches the AggreVaTeD row and no other
    assert re.search(r'^aggrevated_advantage = "gae"$', (out / "seed0" / "aggrevated" / "config.toml").read_text(), re.M)
    assert 'aggrevated_advantage = "gae"' not in config
    # --row-option reaches every RL row (read as TOML: a bool, a number)
    for row in ("ppo", "ppo__", "aggrevated"):
        text = (out / "seed0" / row / "config.toml").read_text()
        assert re.search(r"^whiten_advantages = false$", text, re.M) and re.search(r"^clip_range = 0.1$", text, re.M)
    # no absolute path of the folder it ran in is left in what a committed reproduction keeps
    kept = [f for f in out.rglob("*") if f.is_file() and f.suffix in (".toml", ".json", ".md")]
    assert kept and not [f for f in kept if str(tmp_path.resolve()) in f.read_text()]
    md = (out / "results.md").read_text()
    assert "The given model `strong`" in md and "| guide |" in md and "guide (given: nothing trained)" in md
    assert "- row options (the RL rows only, not the guide's BC nor the lr trials): {'whiten_advantages': False, " \
           "'clip_range': 0.1}" in md
    settings = json.loads((out / "settings.json").read_text())
    assert settings["rows"] == "ppo,ppo++,aggrevated" and settings["beta"] == 0.5
    assert settings["aggrevated_advantage"] == "gae"
    bad = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "reproduce.py"), "--preset", "tiny", "--rows", "ppo,nope",
         "--out", str(tmp_path / "bad")], capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "unknown row nope" in bad.stderr


def test_the_difficulty_table_means_buckets_and_pairs_seeds():
    sys.path.insert(0, str(ROOT / "bench"))
    from reproduce_difficulty import bucket_means, table

    buckets = ["easy", "hard", "medium", "hard", "easy", "medium"]
    assert bucket_means([1, 0, 0.5, 0.2, 0.8, 0.3], buckets) == {"easy": 0.9, "medium": 0.4, "hard": 0.1}
    seeds = [{"BC (guide)": [0.9, 0.3, 0.6, 0.3, 0.9, 0.6], "ppo": [0.8, 0.1, 0.5, 0.1, 0.8, 0.5],
              "ppo++": [0.8, 0.3, 0.5, 0.3, 0.8, 0.5]},
             {"BC (guide)": [0.9, 0.3, 0.6, 0.3, 0.9, 0.6], "ppo": [0.6, 0.2, 0.4, 0.2, 0.6, 0.4],
              "ppo++": [0.7, 0.2, 0.4, 0.2, 0.7, 0.4]}]
    result = table(seeds, buckets)
    assert result["counts"] == {"easy": 2, "medium": 2, "hard": 2}
    hard = result["rows"]["ppo++"]["hard"]
    assert abs(hard["mean"] - 0.25) < 1e-12 and hard["n"] == 2
    # paired by seed: +0.2 and 0.0 against PPO, so mean +0.1, s.e. 0.1, ahead at one seed
    assert abs(hard["vs_ppo"]["mean"] - 0.1) < 1e-12 and abs(hard["vs_ppo"]["se"] - 0.1) < 1e-12
    assert hard["vs_ppo"]["ahead"] == 1
    assert abs(result["rows"]["ppo++"]["easy"]["vs_guide"]["mean"] + 0.15) < 1e-12
    assert "vs_ppo" not in result["rows"]["ppo"]["easy"] and "vs_guide" not in result["rows"]["BC (guide)"]["easy"]
    try:
        bucket_means([1.0], buckets)
    except ValueError as e:
        assert "1 rewards for 6 prompts" in str(e)
    else:
        raise AssertionError("a length mismatch must be refused")


def test_no_difficulty_table_without_a_measure(capsys):
    sys.path.insert(0, str(ROOT / "bench"))
    from reproduce_difficulty import section
    from reproduce_jobs import Job

    jobs = [Job("s0-ppo", "row", seed=0, label="ppo", alg="ppo"), Job("difficulty", "difficulty")]
    done = {"s0-ppo": {"metrics": {"reward": 0.5}, "per_prompt": [0.4, 0.6, 0.5]},
            "difficulty": {"unavailable": "task prompts has no measure of prompt difficulty"}}
    assert section(jobs, done, [0]) is None
    assert "no table by prompt difficulty: task prompts has no measure" in capsys.readouterr().out
    done["difficulty"] = {"values": [0.1, 0.9, 0.5], "buckets": ["hard", "easy", "medium"]}
    got = section(jobs, done, [0])
    assert got["table"]["rows"]["ppo"]["hard"]["mean"] == 0.4 and got["table"]["counts"]["easy"] == 1
    del done["s0-ppo"]["per_prompt"]  # a row evaluated before rewards per prompt were kept
    assert section(jobs, done, [0]) is None


def test_the_header_names_the_seeds_that_were_joined():
    sys.path.insert(0, str(ROOT / "bench"))
    from reproduce_report import markdown

    meta = {"task": "t", "preset": "tiny", "seeds": 2, "learner": "l", "command": "c", "date": "d", "machine": "m",
            "wall_s": 60.0, "settings": {}, "first_seed": 1, "seeds_done": [1, 3]}
    table = {"ppo": {"sentiment": {"mean": 0.5, "std": 0.1, "n": 2}}}
    assert "2 seeds (seeds 1, 3)," in markdown(table, meta, {}, None)
    assert "2 seeds (seeds 1–2)," in markdown(table, {**meta, "seeds_done": [1, 2]}, {}, None)


def test_the_delta_column_is_named_after_the_main_metric():
    sys.path.insert(0, str(ROOT / "bench"))
    from reproduce_report import markdown

    meta = {"task": "t", "preset": "tiny", "seeds": 1, "learner": "l", "command": "c", "date": "d", "machine": "m",
            "wall_s": 60.0, "settings": {}}
    table = {"BC (guide)": {"bleu": {"mean": 0.30, "std": 0.0, "n": 1}, "sentiment": {"mean": 0.9, "std": 0.0, "n": 1}},
             "ppo": {"bleu": {"mean": 0.25, "std": 0.0, "n": 1}, "sentiment": {"mean": 0.5, "std": 0.0, "n": 1}}}
    md = markdown(table, meta, {}, None)
    assert "| method | bleu | sentiment | Δ bleu vs guide |" in md and "Δ sentiment" not in md
    assert "| ppo | 0.250 ± 0.000 | 0.500 ± 0.000 | -0.050 |" in md  # the Δ is bleu's


def test_the_health_table_shows_the_bc_guide_loss(tmp_path):
    sys.path.insert(0, str(ROOT / "bench"))
    from reproduce_report import health, markdown

    guide, ppo = tmp_path / "guide", tmp_path / "ppo"
    for run, last in ((guide, {"iteration": 2, "scheme": "bc", "bc_loss": 3.5, "bc_perplexity": 33.1}),
                      (ppo, {"iteration": 2, "reward_mean": 0.7, "approx_kl": 0.001, "kl_exact": 0.09,
                             "kl_coef": 0.06, "clipfrac": 0.01})):
        run.mkdir()
        (run / "metrics.jsonl").write_text(json.dumps({"iteration": 1}) + "\n" + json.dumps(last) + "\n")
    rows_health = health([{"BC (guide)": guide, "ppo": ppo}])
    assert rows_health["BC (guide)"] == {"bc_loss": 3.5}
    meta = {"task": "t", "preset": "tiny", "seeds": 1, "learner": "l", "command": "c", "date": "d", "machine": "m",
            "wall_s": 60.0, "settings": {}}
    md = markdown({"ppo": {"sentiment": {"mean": 0.5, "std": 0.0, "n": 1}}}, meta, rows_health, None)
    assert "| run | reward | approx_kl | exact KL / token | KL coef | clipfrac | BC loss |" in md
    assert "| BC (guide) |  |  |  |  |  | 3.5000 |" in md and "| ppo | 0.7000 | 0.0010 | 0.0900 | 0.0600 | 0.0100 |  |" in md
    # a given guide trains nothing: no BC loss column
    assert "BC loss" not in markdown({"ppo": {"sentiment": {"mean": 0.5, "std": 0.0, "n": 1}}}, meta,
                                     {"ppo": rows_health["ppo"]}, None)


def test_a_folder_whose_jobs_another_holds_adds_no_wall_time(tmp_path):
    sys.path.insert(0, str(ROOT / "bench"))
    from reproduce_jobs import repeated_sources

    def folder(name, **jobs):
        (tmp_path / name / "jobs").mkdir(parents=True)
        for job, result in jobs.items():
            (tmp_path / name / "jobs" / f"{job}.json").write_text(json.dumps(result))
        return tmp_path / name

    s3 = {"metrics": {"sentiment": 0.5}, "seconds": 10.0, "pid": 1}
    a = folder("a", s3_ppo=s3, initial={"per_seed": {"3": {"sentiment": 0.4}}, "seconds": 5.0})
    copy = folder("copy", s3_ppo=s3, initial={"per_seed": {"3": {"sentiment": 0.4}}, "seconds": 5.0})
    part = folder("part", s3_ppo=s3)
    again = folder("again", s3_ppo={**s3, "seconds": 11.0, "pid": 2})  # the same results, run again
    b = folder("b", s4_ppo={**s3, "metrics": {"sentiment": 0.6}})
    assert repeated_sources([a, b]) == []
    assert repeated_sources([a, b, a, copy, part, again]) == [2, 3, 4]  # given twice, a copy, part of a
    assert repeated_sources([part, copy, a]) == [0, 2]  # the first of two copies counts, and what holds part
    assert repeated_sources([again, part]) == []

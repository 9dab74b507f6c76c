"""rlgf plot: learning curves from run folders, grouped by algorithm, seeds as a ± std band."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rlgf_cli.evaluation.curves import curves, group_runs

ROOT = Path(__file__).resolve().parents[1]


def make_run(folder: Path, alg: str, rewards: list[float], init: str | None = None) -> Path:
    folder.mkdir(parents=True)
    lines = ["[train]", f'alg = "{alg}"'] + ([f'init = "{init}"'] if init else [])
    (folder / "config.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    rows = [json.dumps({"iteration": i + 1, "reward_mean": r, "kl_exact": 0.01 * i}) for i, r in enumerate(rewards)]
    (folder / "metrics.jsonl").write_text("\n".join(rows) + "\n{cut by a kill", encoding="utf-8")
    return folder


def test_groups_and_bands(tmp_path):
    bc = make_run(tmp_path / "bc", "bc", [0.1])
    a = make_run(tmp_path / "ppo-s0", "ppo", [0.2, 0.4, 0.6])
    b = make_run(tmp_path / "ppo-s1", "ppo", [0.4, 0.6])
    c = make_run(tmp_path / "warm", "ppo++", [0.7, 0.8], init=str(bc / "final"))
    groups = group_runs([a, b, c])
    assert groups == {"ppo": [a, b], "BC+ppo++": [c]}
    data = curves(groups)
    assert data["ppo"]["iterations"] == [1, 2, 3]
    assert data["ppo"]["mean"] == pytest.approx([0.3, 0.5, 0.6])
    assert data["ppo"]["std"] == pytest.approx([0.1414214, 0.1414214, 0.0])
    assert data["ppo"]["seeds"] == [2, 2, 1]


def test_cli_writes_a_png_and_json(tmp_path):
    a = make_run(tmp_path / "r0", "d2lols", [0.5, 0.6])
    b = make_run(tmp_path / "r1", "d2lols", [0.55, 0.65])
    out = tmp_path / "curves.png"
    proc = subprocess.run([sys.executable, "-m", "rlgf_cli", "plot", str(a), str(b), "--out", str(out),
                           "--metric", "kl_exact", "--json", "-"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(proc.stdout)["d2lols"]["mean"] == pytest.approx([0.0, 0.01])
    assert "d2lols (2 runs)" in proc.stderr


def test_cli_errors_are_one_line(tmp_path):
    a = make_run(tmp_path / "r0", "ppo", [0.5])
    for args, text in ((["--metric", "nope"], "no run logged the metric 'nope'"), ([], None)):
        run = [str(a)] if text else [str(tmp_path / "missing")]
        proc = subprocess.run([sys.executable, "-m", "rlgf_cli", "plot", *run, "--out", str(tmp_path / "x.png"), *args],
                              capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert proc.returncode == 1
        assert proc.stderr.startswith("[error]") and "Traceback" not in proc.stderr
        assert (text or "holds no metrics.jsonl") in proc.stderr


def test_the_iteration_axis_has_whole_iterations_only(tmp_path, monkeypatch):
    import rlgf_cli.files as files
    from rlgf_cli.evaluation.curves import plot_curves

    seen = []
    monkeypatch.setattr(files, "save_png", lambda fig, path, option: seen.append(fig))
    runs = [make_run(tmp_path / "ppo-s0", "ppo", [0.2, 0.4, 0.3, 0.5, 0.6])]
    plot_curves({"ppo": runs}, tmp_path / "c.png")
    ax = seen[0].axes[0]
    ax.figure.canvas.draw()
    lo, hi = ax.get_xlim()
    ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
    assert len(ticks) >= 3 and all(float(t).is_integer() for t in ticks)


def test_an_unwritable_json_path_fails_before_the_plot_is_written(tmp_path):
    a = make_run(tmp_path / "r0", "ppo", [0.5])
    out = tmp_path / "c.png"
    blocked = tmp_path / "a-file"
    blocked.write_text("x", encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "rlgf_cli", "plot", str(a), "--out", str(out),
                           "--json", str(blocked / "x.json")], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 1 and proc.stderr.startswith("[error]") and "--json" in proc.stderr
    assert not out.exists()


def test_a_chart_that_is_not_png_is_refused_up_front(tmp_path):
    a = make_run(tmp_path / "r0", "ppo", [0.5])
    proc = subprocess.run([sys.executable, "-m", "rlgf_cli", "plot", str(a), "--out", str(tmp_path / "c.jpg")],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 1 and proc.stderr.startswith("[error] --out") and "is not a .png file" in proc.stderr
    assert not (tmp_path / "c.jpg").exists()


def test_a_flat_curve_has_no_offset_axis_and_a_repeated_seed_is_named(tmp_path, monkeypatch):
    """A reward flat to 1e-6 drew the axis as '1e-6 + 4.926e-1'; two runs of one seed made a band
    that claims a spread over seeds."""
    import rlgf_cli.files as files
    from rlgf_cli.evaluation.curves import plot_curves, repeated_seeds

    seen = []
    monkeypatch.setattr(files, "save_png", lambda fig, path, option: seen.append(fig))
    flat = [make_run(tmp_path / f"flat{i}", "ppo", [0.4926, 0.4926 + 1e-6, 0.4926]) for i in (0, 1)]
    plot_curves({"ppo": flat}, tmp_path / "c.png")
    ax = seen[0].axes[0]
    ax.figure.canvas.draw()
    assert ax.yaxis.get_offset_text().get_text() == ""
    for run in flat:
        (run / "config.toml").write_text('[train]\nalg = "ppo"\nseed = 3\n', encoding="utf-8")
    (note,) = repeated_seeds({"ppo": flat})
    assert "all have seed 3" in note and str(flat[0]) in note
    (flat[1] / "config.toml").write_text('[train]\nalg = "ppo"\nseed = 4\n', encoding="utf-8")
    assert repeated_seeds({"ppo": flat}) == []


@pytest.mark.parametrize("damage, message", [
    ('{"iteration": "two", "reward_mean": 0.5}\n', "line 2: 'iteration' is 'two', not a whole number"),
    ('{"iteration": 2.7, "reward_mean": 0.5}\n', "line 2: 'iteration' is 2.7, not a whole number"),
    ('{"iteration": null}\n', "line 2: 'iteration' is None"),
])
def test_a_damaged_metrics_file_is_named(tmp_path, damage, message):
    from backends.errors import RlgfError
    from rlgf_cli.evaluation.curves import read_metrics

    run = make_run(tmp_path / "r", "ppo", [0.5])
    (run / "metrics.jsonl").write_text('{"iteration": 1, "reward_mean": 0.4}\n' + damage, encoding="utf-8")
    with pytest.raises(RlgfError, match=message.replace("(", r"\(")):
        read_metrics(run)
    (run / "metrics.jsonl").write_bytes(b'{"iteration": 1}\n\xff\xfe junk\n')
    with pytest.raises(RlgfError, match="is damaged: not UTF-8"):
        read_metrics(run)


def test_a_warm_start_is_one_group_however_init_named_it(tmp_path, monkeypatch):
    bc = make_run(tmp_path / "exp" / "bc", "bc", [0.1])
    spellings = [str(bc / "final"), str(bc), f"hf:{bc / 'final'}", str(bc / "checkpoints" / "iter-0002"),
                 "exp/bc/final"]  # relative to where it ran (the reproduction writes them so)
    runs = [make_run(tmp_path / "exp" / f"w{i}", "ppo", [0.5], init=init) for i, init in enumerate(spellings)]
    monkeypatch.chdir(tmp_path.parent)  # plotted from elsewhere
    assert group_runs(runs) == {"BC+ppo": runs}


def test_a_run_without_the_metric_is_named_not_dropped_silently(tmp_path):
    bc = tmp_path / "bc"
    bc.mkdir()
    (bc / "config.toml").write_text('[train]\nalg = "bc"\n', encoding="utf-8")
    (bc / "metrics.jsonl").write_text(json.dumps({"iteration": 1, "bc_loss": 0.9}) + "\n", encoding="utf-8")
    a = make_run(tmp_path / "r0", "ppo", [0.5, 0.6])
    out = tmp_path / "curves.png"
    proc = subprocess.run([sys.executable, "-m", "rlgf_cli", "plot", str(bc), str(a), "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "warning: bc is not drawn: 1 run logged no reward_mean (it has bc_loss)" in proc.stderr
    assert f"wrote {out}: reward_mean for ppo (1 run)\n" in proc.stderr

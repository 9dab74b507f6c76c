"""Task plug-ins that shadow a built-in name or fail to load: `rlgf tasks` lists them with the
reason (never failing as a whole), the shadowing warning is said once per process, and using a
broken plug-in is one [error] line naming it, its entry point and why."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHADOW_WARNING = "ignoring the task entry point prompts = rlgf_plug_good:Good"


@pytest.fixture
def plugins(tmp_path):
    """A distribution whose ``rlgf.tasks`` entry points shadow a built-in, name a module that
    does not exist, and name one that raises RuntimeError at import; its folder for PYTHONPATH."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "rlgf_plug_good.py").write_text(textwrap.dedent('''
        from tasks.prompts import PromptsTask

        class Good(PromptsTask):
            pass
        '''))
    (site / "rlgf_plug_boom.py").write_text('raise RuntimeError("plug-in config missing")\n')
    dist = site / "rlgf_plug-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: rlgf-plug\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[rlgf.tasks]\nprompts = rlgf_plug_good:Good\n"
                                           "broken = rlgf_plug_nothere:Thing\nboom = rlgf_plug_boom:Thing\n")
    return site


def rlgf(site: Path, *args, cwd=None, columns=200):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)]), "COLUMNS": str(columns)}
    env.pop("RLGF_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "rlgf_cli", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, env=env, timeout=120)


@pytest.mark.parametrize("columns", [200, 80])  # a table, or one block per task
def test_tasks_lists_broken_plugins_with_the_reason_and_warns_once(plugins, columns):
    proc = rlgf(plugins, "tasks", columns=columns)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count(SHADOW_WARNING) == 1, proc.stderr
    # a broken plug-in's other cells are empty, so its reason's words follow one another
    words = " ".join(proc.stdout.replace("│", " ").split())
    assert ("task broken (entry point broken = rlgf_plug_nothere:Thing of rlgf-plug) failed to load: "
            "ModuleNotFoundError: No module named 'rlgf_plug_nothere'") in words
    assert "task boom (entry point boom = rlgf_plug_boom:Thing of rlgf-plug) failed to load: RuntimeError: " \
           "plug-in config missing" in words
    assert "rotten-tomatoes" in words  # the other tasks are still listed

    rows = {r["name"]: r for r in json.loads(rlgf(plugins, "tasks", "--json").stdout)}
    assert rows["prompts"]["source"] == "built-in"
    assert "entry point boom = rlgf_plug_boom:Thing of rlgf-plug" in rows["boom"]["description"]
    assert "RuntimeError: plug-in config missing" in rows["boom"]["error"]


def test_train_warns_once_about_a_shadowing_plugin(plugins):
    proc = rlgf(plugins, "train", "--task", "rotten-tomatoes", "--print-config", "-q")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count(SHADOW_WARNING) == 1, proc.stderr


@pytest.mark.parametrize("name, reason", [
    ("boom", "RuntimeError: plug-in config missing"),
    ("broken", "ModuleNotFoundError: No module named 'rlgf_plug_nothere'"),
])
def test_training_a_broken_plugin_is_one_error_naming_it(plugins, tmp_path, name, reason):
    proc = rlgf(plugins, "train", "--task", name, "--iterations", "1", "--device", "cpu",
                "--out", str(tmp_path / "run"))
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("[error] ")]
    assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in proc.stderr, proc.stderr
    assert f"task {name} (entry point {name} = rlgf_plug_" in errors[0], errors[0]
    assert "of rlgf-plug" in errors[0] and f"failed to load: {reason}" in errors[0], errors[0]
    assert "unexpected" not in errors[0]

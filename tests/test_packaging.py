"""The built wheel, installed away from the checkout, is a working rlgf.

The suite imports rlgf from the source tree, where every subpackage is found whatever the
packaging says; a user gets only what the wheel holds. So: build it, check it ships every
package and module of the tree, install it into a folder of its own and run the installed
`rlgf` from elsewhere.
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOPS = ("rlgf_cli", "backends", "tasks")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # built from a copy of what packaging reads, so the checkout gains no build/ folder
    src = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for top in TOPS:
        shutil.copytree(ROOT / top, src / top, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           str(src), "-w", str(out)], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 and "No module named pip" in proc.stderr:
        pytest.skip("pip is not installed in this interpreter")
    assert proc.returncode == 0, proc.stderr
    (built,) = out.glob("rlgf-*.whl")
    return built


def _tree_modules() -> set[str]:
    """Every .py file of the source packages (folders with an __init__.py), as wheel paths."""
    files = set()
    for top in TOPS:
        for init in (ROOT / top).rglob("__init__.py"):
            package = init.parent
            if "__pycache__" in package.parts:
                continue
            files |= {p.relative_to(ROOT).as_posix() for p in package.glob("*.py")}
    return files


def test_wheel_ships_every_package_and_module(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = _tree_modules()
    assert {"rlgf_cli/training/trainer.py", "backends/hf/policy.py", "tasks/scoring/__init__.py"} <= expected
    missing = sorted(expected - names)
    assert not missing, f"left out of the wheel: {missing}"
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "rlgf = rlgf_cli.app:main" in text and "[rlgf.backends]" in text


def test_installed_wheel_runs_away_from_the_checkout(wheel, tmp_path):
    site = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
                           "--target", str(site), str(wheel)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    away = tmp_path / "elsewhere"
    away.mkdir()
    # -S: no .pth files, so the checkout's editable install cannot answer for a module the wheel
    # lacks; the dependencies come from this interpreter's site-packages, after the wheel's copy
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), sysconfig.get_paths()["purelib"]])}
    env.pop("RLGF_DEBUG", None)
    python = [sys.executable, "-S"]
    where = subprocess.run(
        [*python, "-c", "import rlgf_cli.app, backends.hf.policy, tasks.scoring; "
         "print(rlgf_cli.app.__file__); print(backends.hf.policy.__file__); print(tasks.scoring.__file__)"],
        capture_output=True, text=True, cwd=away, env=env, timeout=120)
    assert where.returncode == 0, where.stderr
    for line in where.stdout.split():
        assert Path(line).resolve().is_relative_to(site.resolve()), line  # the installed copy, not the checkout
    script = site / "bin" / "rlgf"
    assert script.is_file()
    listing = subprocess.run([*python, str(script), "tasks", "--json"], capture_output=True, text=True,
                             cwd=away, env=env, timeout=120)
    assert listing.returncode == 0, listing.stderr
    assert "rotten-tomatoes" in {t["name"] for t in json.loads(listing.stdout)}
    backends = subprocess.run([*python, str(script), "backends", "--json"], capture_output=True, text=True,
                              cwd=away, env=env, timeout=120)
    assert backends.returncode == 0, backends.stderr
    assert "hf" in {b["name"] for b in json.loads(backends.stdout)}

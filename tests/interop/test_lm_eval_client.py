"""EleutherAI's lm-eval runs a small generation task and a small log-likelihood task against
``rlgf serve`` through its ``local-completions`` model, and the generation task through
``local-chat-completions`` (tasks from local files: nothing is downloaded)."""

from __future__ import annotations

import json
import os

import pytest

from tiny_assets import served

if os.environ.get("RLGF_INTEROP") != "1":  # minutes and extra packages: `make test-interop` sets it
    pytest.skip("interop test: run `make test-interop`", allow_module_level=True)

lm_eval = pytest.importorskip("lm_eval", reason="make test-interop installs lm-eval")

ROWS = [{"prompt": f"Item {i} is", "target": " good", "choices": [" good", " bad"], "label": i % 2} for i in range(6)]
GEN = """task: rlgf_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{target}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 6
  do_sample: false
metric_list:
  - metric: exact_match
"""
MC = """task: rlgf_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{prompt}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
"""


@pytest.fixture
def task_dir(tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n", encoding="utf-8")
    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / "rlgf_gen.yaml").write_text(GEN.format(data=data), encoding="utf-8")
    (folder / "rlgf_mc.yaml").write_text(MC.format(data=data), encoding="utf-8")
    return folder


def test_lm_eval_completions_and_chat_against_rlgf_serve(task_dir, tiny_causal_dir, monkeypatch):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    monkeypatch.setenv("OPENAI_API_KEY", "unused")
    manager = TaskManager(include_path=str(task_dir))
    with served(tiny_causal_dir) as server:
        args = (f"model=tiny,base_url={server.url}/completions,tokenizer_backend=huggingface,"
                f"tokenizer={tiny_causal_dir},tokenized_requests=False,num_concurrent=2,max_retries=1")
        out = simple_evaluate(model="local-completions", model_args=args, tasks=["rlgf_gen", "rlgf_mc"],
                              task_manager=manager, limit=4)
        assert 0.0 <= out["results"]["rlgf_gen"]["exact_match,none"] <= 1.0
        assert 0.0 <= out["results"]["rlgf_mc"]["acc,none"] <= 1.0
        completions = server.counts["completion_requests"]
        assert completions >= 4 + 4 * 2  # four generations, two choices scored for each of four rows
        chat_args = f"model=tiny,base_url={server.url}/chat/completions,num_concurrent=1,max_retries=1"
        chat = simple_evaluate(model="local-chat-completions", model_args=chat_args, tasks=["rlgf_gen"],
                               task_manager=manager, limit=4, apply_chat_template=True)
        assert 0.0 <= chat["results"]["rlgf_gen"]["exact_match,none"] <= 1.0
        assert server.counts["completion_requests"] >= completions + 4

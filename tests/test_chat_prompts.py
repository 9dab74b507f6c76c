"""Chat rows for ``--task prompts``: rendered with the model's own template, replies end at its
end-of-turn token; BLEU-4/ROUGE-L with references; ``hf:`` datasets from a local folder."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from backends.errors import RlgfError
from backends.hf.chat_template import end_of_turn_id
from backends.hf.policy import HFPolicy
from rlgf_cli.app import app
from tasks import get_task
from tiny_assets import make_tiny_chat

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("torch_one_thread")

REWARD = '''
def reward(prompts, completions, references):
    return [sum(ch in "aeiou" for ch in c) / max(len(c), 1) for c in completions]
'''


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory):
    """A tiny causal LM whose tokenizer has a ChatML template; its EOS stays ``</s>``."""
    return make_tiny_chat(tmp_path_factory.mktemp("tiny-chat"))


def chat_rows(n: int = 30) -> list[dict]:
    return [{"messages": [{"role": "system", "content": "Be brief."},
                          {"role": "user", "content": f"Describe item {i}."}],
             "reference": f"Item {i} is fine."} for i in range(n)]


@pytest.fixture
def chat_file(tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in chat_rows()) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def reward_file(tmp_path):
    path = tmp_path / "vowels.py"
    path.write_text(REWARD, encoding="utf-8")
    return path


def test_replies_end_at_the_templates_end_of_turn(chat_dir):
    policy = HFPolicy.load(str(chat_dir), device="cpu")
    im_end = policy.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert end_of_turn_id(policy.tokenizer) == im_end != policy.tokenizer.eos_token_id
    assert im_end in policy.eos_ids and policy.eos_id == policy.tokenizer.eos_token_id
    import torch

    body = policy.tokenizer("ok", add_special_tokens=False)["input_ids"]
    response = torch.tensor([body + [im_end] + body])
    assert policy.decode(response, torch.ones_like(response)) == ["ok"]


def test_chat_rows_are_rendered_with_the_policys_template(chat_file, chat_dir):
    task = get_task("prompts", data=str(chat_file))
    examples = task.examples("train")[:2]
    assert examples[0].prompt.startswith("system: Be brief.\nuser: Describe item") and examples[0].prompt.endswith(
        "assistant:")  # what rewards see: no template tokens
    policy = HFPolicy.load(str(chat_dir), device="cpu")
    text = task.prompts_for(examples, policy)[0]
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nDescribe item")
    assert text.endswith("<|im_end|>\n<|im_start|>assistant\n")
    ids, _ = policy.encode_prompts([text])
    start = policy.tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert ids[0].tolist().count(start) == 3  # one token per marker, not its characters
    # a model without a template (and an API model) reads the plain lines
    plain = HFPolicy.load(str(chat_dir), device="cpu")
    plain.tokenizer.chat_template = None
    assert task.prompts_for(examples, plain) == [ex.prompt for ex in examples]


def test_chat_template_modes_for_plain_prompt_rows(tmp_path, chat_dir):
    path = tmp_path / "plain.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": f"Say {i}."}) for i in range(10)) + "\n", encoding="utf-8")
    policy = HFPolicy.load(str(chat_dir), device="cpu")
    auto = get_task("prompts", data=str(path))
    ex = auto.examples("train")[:1]
    assert auto.prompts_for(ex, policy) == [ex[0].prompt]  # auto: plain rows stay plain
    on = get_task("prompts", data=str(path), chat_template="on")
    assert on.prompts_for(ex, policy) == [f"<|im_start|>user\n{ex[0].prompt}<|im_end|>\n<|im_start|>assistant\n"]
    policy.tokenizer.chat_template = None
    with pytest.raises(RlgfError, match="has no chat template"):
        on.prompts_for(ex, policy)
    with pytest.raises(RlgfError, match="--chat-template 'sometimes'"):
        get_task("prompts", data=str(path), chat_template="sometimes")


@pytest.mark.parametrize("messages, message", [
    ([{"role": "robot", "content": "hi"}], "has role 'robot'"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], "the last turn is the assistant's"),
    ([{"role": "system", "content": "be kind"}], "no user turn"),
    ([{"role": "user"}], "a text 'content'"),
    ("hello", "non-empty list"),
])
def test_bad_chat_rows_are_one_error_line(tmp_path, messages, message, reward_file, chat_dir):
    path = tmp_path / "bad.jsonl"
    good = json.dumps(chat_rows(1)[0])
    path.write_text(good + "\n" + json.dumps({"messages": messages}) + "\n", encoding="utf-8")
    result = runner.invoke(app, ["train", "--task", "prompts", "--data", str(path), "--reward", f"{reward_file}:reward",
                                 "--learner", str(chat_dir), "--out", str(tmp_path / "run"), "--quiet"])
    lines = [x for x in result.output.splitlines() if x.startswith("[error]")]
    assert result.exit_code == 1 and len(lines) == 1 and "Traceback" not in result.output, result.output
    assert f"{path}, line 2" in lines[0] and message in lines[0]


def test_chat_rows_train_and_evaluate_with_overlap_metrics(tmp_path, chat_file, chat_dir, reward_file):
    for alg in ("ppo", "ppo++"):
        args = ["train", "--task", "prompts", "--data", str(chat_file), "--reward", f"{reward_file}:reward",
                "--learner", str(chat_dir), "--alg", alg, "--iterations", "2", "--episodes", "4", "--epochs", "1",
                "--max-new-tokens", "6", "--device", "cpu", "--out", str(tmp_path / alg), "--quiet"]
        if alg != "ppo":
            args += ["--guide", str(chat_dir)]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, (result.output, result.exception)
    report = tmp_path / "eval.json"
    result = runner.invoke(app, ["eval", "--task", "prompts", "--data", str(chat_file), "--reward",
                                 f"{reward_file}:reward", "-c", str(tmp_path / "ppo" / "final"), "--reference",
                                 str(chat_dir), "--limit", "3", "--max-new-tokens", "6", "--device", "cpu",
                                 "--json", str(report), "--quiet"])
    assert result.exit_code == 0, (result.output, result.exception)
    data = json.loads(report.read_text())
    metrics = data["results"][0]["metrics"]
    assert {"reward", "bleu4", "rouge_l", "perplexity", "output_perplexity", "length"} <= set(metrics)
    assert 0.0 <= metrics["bleu4"] <= 1.0 and 0.0 <= metrics["rouge_l"] <= 1.0
    assert data["task_info"]["chat_rows"] == 30 and data["task_info"]["chat_template"] == "auto"


def test_overlap_metrics_score_a_perfect_copy_as_one():
    from tasks.prompts import overlap_metrics

    refs = [("the cat sat on the mat today",), ("a dog ran in the park at noon",)]
    perfect = overlap_metrics([r[0] for r in refs], refs)
    assert perfect["bleu4"] == pytest.approx(1.0, abs=1e-6) and perfect["rouge_l"] == pytest.approx(1.0)
    worse = overlap_metrics(["the cat sat", "a bird flew"], refs)
    assert worse["bleu4"] < 0.5 and worse["rouge_l"] < perfect["rouge_l"]


def test_an_eval_file_of_test_rows_only(tmp_path, chat_dir, reward_file):
    path = tmp_path / "test_only.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": f"Item {i}:", "split": "test"}) for i in range(5)) + "\n",
                    encoding="utf-8")
    report = tmp_path / "eval.json"
    result = runner.invoke(app, ["eval", "--task", "prompts", "--data", str(path), "--reward", f"{reward_file}:reward",
                                 "-p", str(chat_dir), "--reference", "none", "--max-new-tokens", "4",
                                 "--device", "cpu", "--json", str(report), "--quiet"])
    assert result.exit_code == 0, (result.output, result.exception)
    (res,) = json.loads(report.read_text())["results"]
    assert res["n"] == 5 and "bleu4" not in res["metrics"] and "reward" in res["metrics"]


def test_hf_datasets_from_a_local_folder(tmp_path):
    import datasets

    dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"text": [f"train {i}" for i in range(6)]}),
        "validation": datasets.Dataset.from_dict({"text": ["val 0", "val 1"]}),
        "test": datasets.Dataset.from_dict({"text": ["test 0"]}),
        "unsupervised": datasets.Dataset.from_dict({"text": ["extra"]}),
    })
    folder = tmp_path / "ds"
    dd.save_to_disk(str(folder))
    task = get_task("prompts", data=f"hf:{folder}", prompt_field="text")
    assert [len(task.examples(s)) for s in ("train", "val", "test")] == [6, 2, 1]
    assert task.examples("test")[0].prompt == "test 0"
    with pytest.raises(RlgfError, match="could not load the dataset hf:no-such-dataset-rlgf"):
        get_task("prompts", data="hf:no-such-dataset-rlgf:train").examples("train")


def test_sampling_and_minimum_length_are_options(chat_file, tmp_path, reward_file, chat_dir):
    task = get_task("prompts", data=str(chat_file), temperature=0.7, top_k=0, top_p=0.9, min_new_tokens=3)
    assert task.train_sampling == task.eval_sampling
    assert (task.train_sampling.temperature, task.train_sampling.top_k, task.train_sampling.top_p) == (0.7, 0, 0.9)
    assert task.min_new_tokens == 3
    default = get_task("prompts", data=str(chat_file)).train_sampling
    assert (default.temperature, default.top_k, default.top_p) == (1.0, 50, 1.0)
    result = runner.invoke(app, ["train", "--task", "prompts", "--data", str(chat_file), "--reward",
                                 f"{reward_file}:reward", "--learner", str(chat_dir), "--temperature", "5",
                                 "--out", str(tmp_path / "run"), "--quiet"])
    lines = [x for x in result.output.splitlines() if x.startswith("[error]")]
    assert result.exit_code == 1 and len(lines) == 1 and "temperature 5" in lines[0], result.output


def test_a_template_that_writes_its_own_bos_is_read_with_one(tmp_path):
    """Llama 3's, Gemma's and Mistral's templates begin with {{ bos_token }}: the rendered text must
    not get the tokenizer's BOS a second time — not in decoding, scoring or serve's logprobs."""
    from backends.hf.chat_template import render
    from rlgf_cli.serving.logprobs import choice_logprobs
    from tiny_assets import CHATML

    policy = HFPolicy.load(str(make_tiny_chat(tmp_path / "bos", template="{{ bos_token }}" + CHATML)))
    chat = [{"role": "user", "content": "Hi"}]
    text = render(policy.tokenizer, chat)
    expected = list(policy.tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True,
                                                         return_dict=False))
    assert text.startswith("<s>") and expected.count(policy.tokenizer.bos_token_id) == 1
    assert policy.encode_prompts([text])[0][0].tolist() == expected
    assert policy.sequence_nll([text], [" fine"]) == policy.sequence_nll([text.removeprefix("<s>")], [" fine"])
    echoed = choice_logprobs(policy, text, "", echo=True, top=0)
    assert echoed["tokens"][0] == "<s>" and echoed["token_logprobs"][0] is None
    assert "".join(echoed["tokens"]) == text and len(echoed["tokens"]) == len(expected)
    from rlgf_cli.serving.service import Service

    service = Service(policy, model_name="bos")
    try:  # what the context has left after it counts the one BOS the model reads
        assert service._context_room(text) == policy._max_positions() - len(expected)
    finally:
        service.close()

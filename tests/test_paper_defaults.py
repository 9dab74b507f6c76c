"""The paper as published: per-task defaults from Tables 5 and 6, the learning-rate schedule,
and BC targets that end with EOS (so a cloned model learns to stop)."""

from __future__ import annotations

import pytest
import torch
from conftest import make_byte_tokenizer, make_tiny_causal, make_tiny_seq2seq

from backends.base import Sampling
from backends.hf.policy import HFPolicy
from rlgf_cli.training.bc import BCTrainer
from rlgf_cli.runtime import set_seed
from rlgf_cli.training.config import TrainConfig, build_config
from tasks.base import Example, Task

pytestmark = pytest.mark.usefixtures("torch_one_thread")


# -- Tables 5 and 6 ---------------------------------------------------------------------------
def test_imdb_defaults_are_table_5():
    """RL4LMs counts steps in token transitions: 1,280 per update of 48-token episodes ≈ 27
    episodes, minibatches of 64 tokens (1 episode), 5 epochs, lr 1e-6, 128,000 steps = 100
    iterations; γ 0.99, λ 0.95, clip 0.2, value coefficient 0.5, KL 0.1 adaptive."""
    cfg = build_config(None, task="imdb", alg="ppo")
    got = {k: getattr(cfg, k) for k in ("iterations", "episodes", "minibatch_size", "epochs", "lr", "lr_schedule",
                                         "gamma", "lam", "clip_range", "vf_coef", "kl_coef", "target_kl")}
    assert got == {"iterations": 100, "episodes": 27, "minibatch_size": 1, "epochs": 5, "lr": 1e-6,
                   "lr_schedule": "constant", "gamma": 0.99, "lam": 0.95, "clip_range": 0.2, "vf_coef": 0.5,
                   "kl_coef": 0.1, "target_kl": 0.1}
    # and the guided algorithms' Table 6 values
    d2 = build_config(None, task="imdb", alg="d2lols", guide="g")
    assert (d2.alpha, d2.switch_iteration, d2.betas()) == (None, 20, {"ppo++": 0.2, "aggrevated": 0.8})
    assert build_config(None, task="imdb", alg="lols", guide="g").algorithm.default_alpha == 0.8


def test_commongen_defaults_are_table_6():
    cfg = build_config(None, task="commongen", alg="ppo++", guide="g")
    got = {k: getattr(cfg, k) for k in ("epochs", "lr", "lr_schedule", "kl_coef", "clip_range", "vf_coef")}
    assert got == {"epochs": 1, "lr": 1e-5, "lr_schedule": "linear", "kl_coef": 0.0, "clip_range": 0.4,
                   "vf_coef": 3.0}


def test_rotten_tomatoes_has_cpu_sized_defaults_of_its_own():
    """Not the paper's: 10 iterations of 32 episodes, 2 epochs of minibatches of 16, lr 5e-5
    (the learning rate the reproduction chose on the validation split)."""
    cfg = build_config(None, task="rotten-tomatoes", alg="ppo")
    got = {k: getattr(cfg, k) for k in ("iterations", "episodes", "minibatch_size", "epochs", "lr")}
    assert got == {"iterations": 10, "episodes": 32, "minibatch_size": 16, "epochs": 2, "lr": 5e-5}
    assert build_config(None, task="rotten-tomatoes", alg="ppo", episodes=8).minibatch_size == 8
    assert build_config(None, task="rotten-tomatoes", alg="bc").learning_rate == 1e-5  # BC keeps its own


def test_flags_and_files_override_task_defaults_and_bc_keeps_its_own(tmp_path):
    assert build_config(None, task="imdb", alg="ppo", epochs=2).epochs == 2
    file = tmp_path / "run.toml"
    file.write_text('task = "commongen"\nalg = "ppo"\nclip_range = 0.3\n', encoding="utf-8")
    cfg = build_config(str(file))
    assert (cfg.clip_range, cfg.vf_coef) == (0.3, 3.0)
    bc = build_config(None, task="imdb", alg="bc")
    assert (bc.learning_rate, bc.epochs) == (1e-5, TrainConfig.epochs)  # RL defaults are not BC's


def test_an_old_config_with_kl_horizon_still_loads(tmp_path):
    file = tmp_path / "old.toml"
    file.write_text('[train]\nalg = "ppo"\nkl_horizon = 10000\n', encoding="utf-8")
    assert build_config(str(file)).alg == "ppo"


# -- learning-rate schedule ----------------------------------------------------------------
def test_linear_schedule_decays_from_the_base_rate():
    from test_guided_training import TASK

    tokenizer = make_byte_tokenizer()
    model, _ = make_tiny_causal(tokenizer)
    policy = HFPolicy(model, tokenizer)
    from rlgf_cli.training.trainer import Trainer

    cfg = TrainConfig(task="letters", alg="ppo", iterations=4, episodes=4, epochs=1, minibatch_size=4, lr=1e-3,
                      lr_schedule="linear", device="cpu").validate()
    trainer = Trainer(cfg, TASK, policy, HFPolicy(make_tiny_causal(tokenizer)[0], tokenizer), policy.make_critic())
    rates = []
    for _ in range(4):
        rates.append(trainer.step()["lr"])
    assert rates == pytest.approx([1e-3, 7.5e-4, 5e-4, 2.5e-4])
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(2.5e-4)


# -- BC targets end with EOS -----------------------------------------------------------------
class Stop(Task):
    name = "stop"
    prompt_max_tokens = 8
    max_new_tokens = 8
    min_new_tokens = 0
    train_sampling = Sampling(do_sample=False)
    eval_sampling = Sampling(do_sample=False)

    def bc_examples(self):
        return [Example(prompt=f"{i}", references=(), target="ab") for i in range(8)]

    def examples(self, split):
        return self.bc_examples()


@pytest.mark.parametrize("kind", ["causal", "seq2seq"])
def test_bc_learns_to_stop_after_the_target(kind):
    set_seed(0)
    if kind == "causal":
        tokenizer = make_byte_tokenizer()
        model, _ = make_tiny_causal(tokenizer)
    else:
        model, tokenizer = make_tiny_seq2seq()
    policy = HFPolicy(model, tokenizer)
    # the encoded target ends with the policy's EOS (and only where it fits)
    target, mask = policy.encode_responses(["ab"], 8, append_eos=True)
    assert target[0, int(mask[0].sum()) - 1].item() == policy.eos_id
    cut, cut_mask = policy.encode_responses(["abcdefghij"], 4, append_eos=True)
    assert policy.eos_id not in cut[0, : int(cut_mask[0].sum())].tolist()
    cfg = TrainConfig(task="stop", alg="bc", iterations=40, episodes=8, minibatch_size=8, lr=1e-2,
                      device="cpu").validate()
    trainer = BCTrainer(cfg, Stop(), policy)
    for _ in range(40):
        trainer.step()
    query, qmask = policy.encode_prompts(["3"], 8)
    with torch.no_grad():
        response, rmask = policy.generate(query, qmask, max_new_tokens=8, min_new_tokens=0,
                                          sampling=Sampling(do_sample=False))
    assert policy.decode(response, rmask) == ["ab"]
    assert int(rmask.sum()) <= 3  # "a", "b", EOS — then nothing more


@pytest.mark.parametrize("key,value", [("alpha", '"high"'), ("ppopp_beta", '"x"'), ("aggrevated_beta", "true"),
                                       ("switch_iteration", "2.5"), ("max_new_tokens", '"many"')])
def test_the_new_fields_in_a_config_file_are_type_checked(tmp_path, key, value):
    from backends.errors import RlgfError

    file = tmp_path / "bad.toml"
    file.write_text(f'[train]\nalg = "d2lols"\nguide = "g"\n{key} = {value}\n', encoding="utf-8")
    with pytest.raises(RlgfError, match=f"config value {key} = .* has the wrong type"):
        build_config(str(file))


def test_help_names_every_task_that_sets_its_own_default():
    """`rlgf train --help` (and --print-config's comments) show a default per field: where a built-in
    task sets another value, the shown text names that task, so help never states a default a task
    silently replaces (imdb's 100 iterations, commongen's clip 0.4 …)."""
    from dataclasses import fields

    from rlgf_cli.training.config import TrainConfig, shown_default
    from tasks.registry import TASKS, train_defaults

    by_name = {f.name: f for f in fields(TrainConfig)}
    missing = []
    for task in TASKS:
        for key, value in train_defaults(task).items():
            shown = shown_default(by_name[key])
            try:
                same = float(shown.split(";")[0].split(",")[0]) == float(value)
            except ValueError:
                same = shown.split(";")[0].strip() == str(value)
            if not same and task not in shown:
                missing.append(f"{key}: {task} sets {value!r}, help shows {shown!r}")
    assert not missing, missing

"""The trained models' optimizer: torch's fused AdamW where the device has it, the same
algorithm as the per-tensor loop, and a resumed run keeps the kernel its checkpoint names."""

from __future__ import annotations

import pytest
import torch
from conftest import make_byte_tokenizer, make_tiny_causal

from backends.hf.policy import HFPolicy
from rlgf_cli.training.optimizer import adamw
from rlgf_cli.training.resume_state import load_optimizer, save_optimizer

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _params(seed: int = 0) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in [(64, 32), (32,), (7, 5, 3)]]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)
    return params


def test_cpu_parameters_get_the_fused_kernel_and_the_loops_updates():
    fused_params, loop_params = _params(), _params()
    fused = adamw(fused_params, lr=1e-2, weight_decay=0.1)
    loop = torch.optim.AdamW(loop_params, lr=1e-2, weight_decay=0.1, foreach=False)
    assert fused.defaults["fused"] is True
    for _ in range(5):
        fused.step()
        loop.step()
    for a, b in zip(fused_params, loop_params):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)  # the same algorithm, rounded in its own order
    moved = max((a - b).abs().max().item() for a, b in zip(fused_params, _params()))
    assert moved > 1e-3


def test_devices_without_the_kernel_get_torchs_default():
    params = [torch.nn.Parameter(torch.zeros(3, device="meta"))]
    assert not adamw(params, lr=1e-3, weight_decay=0.0).defaults.get("fused")
    complex_params = [torch.nn.Parameter(torch.zeros(2, dtype=torch.complex64))]
    assert not adamw(complex_params, lr=1e-3, weight_decay=0.0).defaults.get("fused")


def test_both_trainers_use_it():
    from test_precision import VariedPrompts, build

    from rlgf_cli.training.bc import BCTrainer
    from rlgf_cli.training.config import TrainConfig

    tokenizer = make_byte_tokenizer()
    assert build("ppo", "fp32", tokenizer).optimizer.defaults["fused"] is True
    cfg = TrainConfig(task="varied", alg="bc", iterations=1, episodes=4, epochs=1, minibatch_size=4, lr=1e-3,
                      seed=3, device="cpu").validate()
    model, _ = make_tiny_causal(tokenizer, seed=0)

    class WithTargets(VariedPrompts):
        def bc_examples(self):
            return self.examples("train")

    assert BCTrainer(cfg, WithTargets(), HFPolicy(model, tokenizer)).optimizer.defaults["fused"] is True


@pytest.mark.parametrize("written_fused", [True, None])
def test_a_resumed_optimizer_keeps_the_kernel_its_checkpoint_names(tmp_path, written_fused):
    params = _params()
    if written_fused:
        writer = adamw(params, lr=1e-2, weight_decay=0.0)
    else:  # a checkpoint of an rlgf before the fused optimizer
        writer = torch.optim.AdamW(params, lr=1e-2)
    writer.step()
    save_optimizer(writer, tmp_path)
    restored = adamw(_params(), lr=0.5, weight_decay=0.0)
    load_optimizer(restored, tmp_path)
    assert restored.param_groups[0]["fused"] == written_fused
    assert restored.param_groups[0]["lr"] == 1e-2
    restored.step()  # and it steps

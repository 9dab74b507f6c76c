"""bench/update_floor.py: the matrix products of an update recorded (backward included, in the
dtypes the kernels get), replayed alone, and the floor set against the roofline."""

import sys
from argparse import Namespace
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import load_bench

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
floor = load_bench("update_floor")

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_product_flops_per_kind():
    f32 = "float32"
    assert floor.product_flops("mm", (((3, 4), (4, 1), f32), ((4, 5), (5, 1), f32))) == 2 * 3 * 4 * 5
    assert floor.product_flops("addmm", (((5,), (1,), f32), ((3, 4), (4, 1), f32), ((4, 5), (1, 4), f32))) == 120
    assert floor.product_flops("bmm", (((2, 3, 4), (12, 4, 1), f32), ((2, 4, 5), (20, 5, 1), f32))) == 240
    assert floor.product_flops("baddbmm", (((2, 3, 5), (15, 5, 1), f32), ((2, 3, 4), (12, 4, 1), f32),
                                           ((2, 4, 5), (20, 5, 1), f32), ("scalar", 1.0))) == 240


def test_the_log_sees_the_backward_products_in_the_kernels_dtype_and_replays_them():
    layer = torch.nn.Linear(8, 6)
    x = torch.randn(5, 8, requires_grad=True)
    log = floor.ProductLog()
    with log.mode, torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    with log.mode:
        y.float().sum().backward()
    kinds = Counter()
    for (name, specs, _), count in log.calls.items():
        kinds[name] += count
        assert all(s[2] == "bfloat16" for s in specs if s[0] != "scalar"), specs  # autocast's casts came first
    assert kinds == Counter(addmm=1, mm=2)  # forward with its bias; the input's and the weight's gradients
    seconds, flops = floor.replay(log.calls, threads=1, rounds=1, min_s=0.0)
    assert seconds > 0 and flops == 3 * 2 * 5 * 8 * 6


def test_an_operand_keeps_expanded_and_transposed_strides():
    t = floor._operand(((4, 3), (0, 1), "bfloat16"))
    assert t.dtype == torch.bfloat16 and t.stride() == (0, 1) and torch.equal(t[0], t[3])
    assert floor._operand(((3, 5), (1, 3), "float32")).stride() == (1, 3)


def test_measure_on_a_tiny_trainer_and_the_verdict():
    bench = load_bench("iteration")
    args = Namespace(preset="tiny", episodes=0, device="cpu", seed=0, alg="ppo", beta=0.2, rollout_batch=0,
                     cuda_graphs=False)
    preset, cfg, _, trainer, _ = bench.build(args)
    r = floor.measure(trainer, threads=1)
    steps = cfg.epochs * (cfg.episodes // cfg.minibatch_size)
    assert r["optimizer_steps"] == steps and trainer.iteration == 3  # warm-up, timed, recorded
    assert r["products"]["calls"] > 0 and r["products"]["alone_s"] > 0
    assert r["floor_s"] == pytest.approx(r["products"]["alone_s"] + steps * r["adamw_step_s"])
    # the bench task's prompts all have the preset's length and its responses are full: nothing is padding
    episode = preset["prompt_tokens"] + preset["new_tokens"] - 1  # the response's last token is not read
    assert r["tokens"]["real"] == r["tokens"]["padded"] == cfg.epochs * cfg.episodes * episode
    assert r["packed_floor_s"] == pytest.approx(r["floor_s"])
    assert r["best_gflops"] == pytest.approx(r["recorded_update_counted_gflop"] / r["packed_floor_s"])
    text = floor.report({**r, "roofline_gflops": r["best_gflops"] * 3})
    assert "**out of reach here**" in text and f"| + {steps} fused AdamW steps" in text
    assert "reachable in principle" in floor.report({**r, "roofline_gflops": r["best_gflops"] * 1.5})


def test_padding_is_counted_as_the_update_trims_it():
    """Two rows of different query and response lengths in one minibatch: the positions the
    forward passes run over and the tokens among them."""
    from types import SimpleNamespace

    batch = SimpleNamespace(query=torch.tensor([[0, 5, 6], [0, 0, 7]]), query_mask=torch.tensor([[0, 1, 1], [0, 0, 1]]),
                            response=torch.tensor([[1, 2, 0], [3, 0, 0]]),
                            response_mask=torch.tensor([[1, 1, 0], [1, 0, 0]]))
    trainer = SimpleNamespace(minibatches=lambda index: [[torch.tensor([0, 1])], [torch.tensor([1])]])
    counts = floor.minibatch_tokens(trainer, SimpleNamespace(batch=batch, global_index=torch.arange(2)))
    # epoch 1: both rows, query width 2 (one all-padding column dropped) + response width 2 less the last
    # column read -> 6 positions, 3 + 2 tokens; epoch 2: the second row alone, 1 + 0 positions, 1 token
    assert counts == {"real": 6, "padded": 7}

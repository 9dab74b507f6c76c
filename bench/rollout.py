"""Benchmark: what a guided roll-in + roll-out costs next to one plain generation.

Times, on the same prompts and sampling, median over ``--repeats`` runs:

(a) a PPO++ batch through :class:`rlgf_cli.training.guided.GuidedRollout` — the guide rolls in (per
    episode with probability β: 0.2 as in the paper, and 1.0 as the worst case) and the learner
    rolls out. Two engines: **lock-step** (the default: both models in one decoding loop, the
    learner reads the roll-in tokens in the steps it makes anyway) and **two-pass** (the roll-in
    first, then the learner prefills the prefix and continues);
(b) one plain generation of the same length by the learner (what PPO pays), through rlgf's
    decoding loop — the baseline of the ratios — and, for reference, through ``model.generate``;
(c) the re-decode approach: the same roll-in, then the learner generates from scratch with the
    prefix forced token by token (decoded step by step instead of prefilled).

It prints a Markdown table with the ratios to (b), the seconds spent in each model's forward
passes, and the number of forward passes and token positions each variant made, which explain
the ratios on latency-bound (GPU) and throughput-bound (CPU) hardware.

CPU (default, a tiny GPT-2-style model built from a config, nothing downloaded)::

    .venv/bin/python bench/rollout.py
    .venv/bin/python bench/rollout.py --arch t5 --new-tokens 20   # encoder-decoder (CommonGen's shape)
GPU, the paper's IMDB batch (GPT-2-124M configs), or a real model as learner and guide::

    .venv/bin/python bench/rollout.py --device cuda --preset paper --dtype bfloat16
    .venv/bin/python bench/rollout.py --device cuda --model PATH [--guide PATH] --dtype bfloat16
"""

from __future__ import annotations

import argparse
import functools
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from backends.base import Sampling  # noqa: E402
from backends.hf.policy import HFPolicy  # noqa: E402
from rlgf_cli.training.algorithms import PPO_PP  # noqa: E402
from rlgf_cli.training.guided import GuidedRollout  # noqa: E402
from tasks.base import Example, Task  # noqa: E402

SAMPLING = Sampling(do_sample=True, top_k=50)  # the tasks' training sampling
BASE = ("(b) plain generation (learner)", "–")
LOCKSTEP = "(a) PPO++ lock-step roll-in + roll-out"


# -- models ---------------------------------------------------------------------------------------
def byte_tokenizer():
    """A byte-level BPE tokenizer without merges (one token per byte), built in memory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    vocab = {token: i for i, token in enumerate(specials)}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


def config_policy(tokenizer, *, layers: int, width: int, seed: int, device: str, dtype) -> HFPolicy:
    """A randomly initialised GPT-2-style causal LM from a config."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=len(tokenizer), n_embd=width, n_layer=layers, n_head=max(1, width // 64),
                        n_positions=512, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config).eval().to(device=device, dtype=dtype)
    return HFPolicy(model, tokenizer, spec=f"gpt2-config-{layers}x{width}")


def t5_config_policy(*, layers: int, width: int, seed: int, device: str, dtype) -> HFPolicy:
    """A randomly initialised T5 (encoder-decoder, the paper's CommonGen shape) with the byte-level
    ByT5 tokenizer, which needs no files."""
    from transformers import ByT5Tokenizer, T5Config, T5ForConditionalGeneration

    tokenizer = ByT5Tokenizer()
    heads = max(1, width // 64)
    config = T5Config(vocab_size=len(tokenizer), d_model=width, d_kv=width // heads, d_ff=4 * width,
                      num_layers=layers, num_decoder_layers=layers, num_heads=heads, dropout_rate=0.0,
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                      decoder_start_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(config).eval().to(device=device, dtype=dtype)
    return HFPolicy(model, tokenizer, spec=f"t5-config-{layers}x{width}")


@functools.lru_cache(maxsize=1)
def iteration_bench():
    """bench/iteration.py as a module (its GPT-2-vocabulary word tokenizer and 64-word prompts)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_iteration", Path(__file__).with_name("iteration.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_policies(args) -> tuple[HFPolicy, HFPolicy]:
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    if args.model:
        learner = HFPolicy.load(args.model, device=args.device, dtype=dtype)
        guide = HFPolicy.load(args.guide or args.model, device=args.device, dtype=dtype)
        return learner, guide
    if args.arch == "t5":
        make_t5 = dict(layers=args.layers, width=args.width, device=args.device, dtype=dtype)
        return t5_config_policy(seed=0, **make_t5), t5_config_policy(seed=1, **make_t5)
    tokenizer = iteration_bench().word_tokenizer(50257) if args.preset == "paper" else byte_tokenizer()
    make = dict(layers=args.layers, width=args.width, device=args.device, dtype=dtype)
    return config_policy(tokenizer, seed=0, **make), config_policy(tokenizer, seed=1, **make)


class BenchTask(Task):
    name = "bench"

    def __init__(self, n: int, new_tokens: int, prompt_tokens: int, prompts: list[str] | None = None) -> None:
        self.n = n
        self.max_new_tokens = self.min_new_tokens = new_tokens  # fixed length, as the sentiment tasks
        self.prompt_max_tokens = prompt_tokens or None  # type: ignore[assignment]  # 0: no truncation
        self.prompts = prompts or [f"Review {i}: this film was one of the most" for i in range(n)]

    def examples(self, split: str) -> list[Example]:
        return [Example(prompt=p, references=()) for p in self.prompts[: self.n]]


# -- instrumentation ----------------------------------------------------------------------------
class Meter:
    """Seconds spent in, forward passes made by, and token positions fed to each model."""

    def __init__(self, device: str, **policies: HFPolicy) -> None:
        self.device = device
        self.seconds = {name: 0.0 for name in policies}
        self.forwards = {name: 0 for name in policies}
        self.positions = {name: 0 for name in policies}
        self._started: dict[str, float] = {}
        for name, policy in policies.items():
            policy.model.register_forward_pre_hook(self._pre(name))
            policy.model.register_forward_hook(self._hook(name), with_kwargs=True)

    def _pre(self, name: str):
        def pre(module, args):
            sync(self.device)
            self._started[name] = time.perf_counter()

        return pre

    def _hook(self, name: str):
        def hook(module, args, kwargs, output):
            sync(self.device)
            self.seconds[name] += time.perf_counter() - self._started.pop(name)
            ids = kwargs.get("decoder_input_ids", kwargs.get("input_ids"))
            if ids is None and args:
                ids = args[0]
            self.forwards[name] += 1
            self.positions[name] += int(ids.numel()) if ids is not None else 0

        return hook

    def reset(self) -> None:
        for d in (self.seconds, self.forwards, self.positions):
            for k in d:
                d[k] = 0


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# -- the three variants ---------------------------------------------------------------------------
def plain(learner: HFPolicy, prompts: list[str], task: BenchTask, *, hf_generate: bool = False):
    query, qmask = learner.encode_prompts(prompts, task.prompt_max_tokens)
    learner.use_hf_generate = hf_generate
    try:
        response, rmask = learner.generate(query, qmask, max_new_tokens=task.max_new_tokens,
                                           min_new_tokens=task.min_new_tokens, sampling=SAMPLING)
    finally:
        learner.use_hf_generate = False
    learner.decode(response, rmask)
    return response


def guided(engine: GuidedRollout, examples: list[Example], beta: float, seed: int):
    return engine.collect(examples, PPO_PP, beta, torch.Generator().manual_seed(seed), len(examples))


def redecode(learner: HFPolicy, guide: HFPolicy, prompts: list[str], task: BenchTask, beta: float, seed: int):
    """Roll in as the engine does (same coin and restart draws), then re-generate the whole
    response with the learner, forcing the prefix tokens one decoding step at a time."""
    from transformers import LogitsProcessor, LogitsProcessorList

    from backends.hf.generate import _generation_config, _run_generate

    n, L = len(prompts), task.max_new_tokens
    generator = torch.Generator().manual_seed(seed)
    query, qmask = learner.encode_prompts(prompts, task.prompt_max_tokens)
    rows = (torch.rand(n, generator=generator) < beta).nonzero().flatten().tolist()
    forced = torch.zeros((n, L), dtype=torch.long, device=learner.device)
    k = torch.zeros(n, dtype=torch.long, device=learner.device)
    if rows:
        ks = torch.randint(0, L, (len(rows),), generator=generator)
        steps = int(ks.max())
        if steps:
            tokens, _ = guide.generate(query[rows], qmask[rows], max_new_tokens=steps, min_new_tokens=steps,
                                       sampling=SAMPLING)
            forced[rows, : tokens.shape[1]] = tokens
            k[rows] = ks.to(learner.device)
    start = 1 if learner.is_seq2seq else query.shape[1]

    class ForcePrefix(LogitsProcessor):
        def __call__(self, input_ids, scores):
            t = input_ids.shape[1] - start
            rows_forced = k > t
            if t >= L or not bool(rows_forced.any()):
                return scores
            only = torch.full_like(scores, float("-inf"))
            only.scatter_(1, forced[:, t : t + 1], 0.0)
            return torch.where(rows_forced[:, None], only, scores)

    config = _generation_config(learner, max_new=L, min_new=task.min_new_tokens, sampling=SAMPLING,
                                output_logits=False)
    inputs = {"input_ids": query, "attention_mask": qmask}
    out = _run_generate(learner, config, LogitsProcessorList([ForcePrefix()]), **inputs)
    response = out.sequences[:, start:]
    for i in rows:  # the forced prefix is really there
        assert response[i, : int(k[i])].tolist() == forced[i, : int(k[i])].tolist()
    learner.decode(response, torch.ones_like(response))
    return response


# -- main ----------------------------------------------------------------------------------------
def run_all(variants: dict, repeats: int, device: str, meter: Meter) -> dict:
    """Round-robin over the variants (so load drifts hit all alike); per variant the median time
    and the mean meter readings (the same seeds, so the same coins and restart points, for (a) and (c))."""
    times: dict = {name: [] for name in variants}
    infos: dict = {name: [] for name in variants}
    for r in range(repeats):
        for name, fn in variants.items():
            meter.reset()
            torch.manual_seed(1000 + r)
            sync(device)
            t = time.perf_counter()
            fn(r)
            sync(device)
            times[name].append(time.perf_counter() - t)
            infos[name].append(dict(meter.forwards, **{f"{k}_s": v for k, v in meter.seconds.items()},
                                    **{f"{k}_positions": v for k, v in meter.positions.items()}))
    out = {}
    for name in variants:
        mean = {k: statistics.fmean(info[k] for info in infos[name]) for k in infos[name][0]}
        out[name] = (statistics.median(times[name]), mean)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--model", help="learner model folder or hub id (default: a GPT-2-style config, random weights)")
    p.add_argument("--guide", help="guide model (default: a second copy of --model, or a second config model)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--arch", choices=["gpt2", "t5"], default="gpt2",
                   help="config models: GPT-2 (causal) or T5 (encoder-decoder, as the paper's CommonGen learner)")
    p.add_argument("--layers", type=int, default=6, help="config model: layers")
    p.add_argument("--width", type=int, default=384, help="config model: hidden size")
    p.add_argument("--batch", type=int, default=64, help="episodes (rows); 64 = the trainer's CPU chunk")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--prompt-tokens", type=int, default=0, help="truncate prompts to this many tokens (0: never)")
    p.add_argument("--betas", default="0.2,1.0", help="comma-separated β values for PPO++")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="rlgf's loop replays decoding steps as CUDA graphs (GPU; (b') stays model.generate)")
    p.add_argument("--preset", choices=["custom", "paper"], default="custom",
                   help="paper: the paper's IMDB batch — GPT-2-124M configs with GPT-2's vocabulary size, "
                        "112 episodes × 64 prompt + 48 new tokens (overrides the size options)")
    args = p.parse_args(argv)
    if args.preset == "paper":
        args.layers, args.width, args.batch, args.new_tokens, args.prompt_tokens = 12, 768, 112, 48, 64
    if args.threads:
        torch.set_num_threads(args.threads)
    betas = [float(b) for b in args.betas.split(",")]

    learner, guide = load_policies(args)
    learner.cuda_graphs = guide.cuda_graphs = args.cuda_graphs
    prompts = None
    if args.preset == "paper":  # exactly 64 words = 64 tokens each
        prompts = [ex.prompt for ex in iteration_bench().BenchTask(args.batch, 64, 48, 50256).examples("train")]
    task = BenchTask(args.batch, args.new_tokens, args.prompt_tokens, prompts)
    examples = task.examples("train")
    prompts = [ex.prompt for ex in examples]
    engines = {lockstep: GuidedRollout(learner, guide, task, max_new_tokens=task.max_new_tokens,
                                       min_new_tokens=task.min_new_tokens, sampling=SAMPLING, lockstep=lockstep)
               for lockstep in (True, False)}
    meter = Meter(args.device, learner=learner, guide=guide)
    meter_prompt_len = learner.encode_prompts(prompts, task.prompt_max_tokens)[1].sum(1).float().mean()

    variants = {BASE: lambda r: plain(learner, prompts, task),
                ("(b') plain generation, model.generate", "–"): lambda r: plain(learner, prompts, task,
                                                                                 hf_generate=True)}
    for beta in betas:
        variants[(LOCKSTEP, f"{beta:g}")] = lambda r, beta=beta: guided(engines[True], examples, beta, r)
        variants[("(a') PPO++ two-pass (roll-in, then prefill)", f"{beta:g}")] = \
            lambda r, beta=beta: guided(engines[False], examples, beta, r)
        variants[("(c) roll-in + re-decode from scratch", f"{beta:g}")] = \
            lambda r, beta=beta: redecode(learner, guide, prompts, task, beta, r)
    with torch.no_grad():
        run_all(variants, 2, args.device, meter)  # warm-up (allocator, kernels, first-call overheads)
        results = run_all(variants, args.repeats, args.device, meter)
    base = results[BASE][0]
    rows = [(name, beta, t, info) for (name, beta), (t, info) in results.items()]

    cuda = args.device.startswith("cuda")
    device = torch.cuda.get_device_name(args.device) if cuda else platform.processor() or "cpu"
    graphs = ""
    if args.cuda_graphs:
        graphs = "; decoding steps as CUDA graphs" if args.device.startswith("cuda") else "; static decoding mode"
    print(f"learner {learner.describe()}; guide {guide.describe()}{graphs}")
    print(f"device {args.device} ({device}, {torch.get_num_threads()} CPU threads), batch {args.batch}, "
          f"{args.new_tokens} new tokens (fixed length), prompts of {int(meter_prompt_len)} tokens, "
          f"{SAMPLING.describe()}, median of {args.repeats}\n")
    print("| variant | β | median s | × plain | guide forward s | learner forward s "
          "| forward passes guide + learner | token positions guide + learner |")
    print("|---|---|---|---|---|---|---|---|")
    for name, beta, t, info in rows:
        print(f"| {name} | {beta} | {t:.3f} | {t / base:.2f} | {info['guide_s']:.3f} | {info['learner_s']:.3f} "
              f"| {info['guide']:.0f} + {info['learner']:.0f} "
              f"| {info['guide_positions']:.0f} + {info['learner_positions']:.0f} |")
    print("\n(times: median; seconds per half, forward passes and token positions: mean over the runs. Forward"
          " passes = sequential decoding steps, what a latency-bound GPU pays for; token positions = rows × input"
          " width summed over the passes, padding included, what a throughput-bound CPU pays for)")
    print("\ngoal: PPO++ roll-in + roll-out ≤ 1.3 × one plain generation (lock-step engine, (a)/(b))")
    for name, beta, t, _ in rows:
        if name == LOCKSTEP:
            print(f"  β = {beta}: {t / base:.2f} — {'met' if t / base <= 1.3 else 'not met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

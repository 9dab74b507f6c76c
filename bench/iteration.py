"""Benchmark: one rlgf training iteration in the paper's IMDB shape, next to an HF-style loop.

The paper's IMDB setting (Chang et al. 2023, Tables 5-6): a GPT-2-124M learner, 112 episodes
per iteration, prompts of 64 tokens, 48 new tokens (fixed length), top-k 50 sampling, 5 PPO
epochs of 4 minibatches (28 episodes each), a critic and a frozen reference model. With PPO++
(the default here, β = 0.2 as in the paper) a guide rolls in the β share of the episodes.

Both sides run on the *same* models (random weights built from a config; nothing is
downloaded) and the same synthetic task, one after the other in the same process:

* **rlgf** — :meth:`rlgf_cli.training.trainer.Trainer.step`: the guide rolls in up to the restart point
  ``k`` in lock-step with the learner's roll-out (one decoding loop, the learner reads the
  roll-in tokens in the steps it makes anyway); reward; old / reference log-probs and values;
  the PPO update. Phase times are the Trainer's own metrics (``time_rollout_s`` …
  ``time_update_s``); the roll-in is the time spent in the guide's forward passes and the
  roll-out the rest of ``time_rollout_s``.
* **HF-style** — the loop people write with ``transformers`` directly: ``model.generate`` for
  the roll-in, then a second full ``model.generate`` by the learner from the prompt that forces
  the roll-in tokens one step at a time (the re-decode approach), plain full-sequence forward
  passes for the log-probs and values, and the same PPO losses, epochs and minibatches. It uses
  the same bf16 autocast as rlgf on CUDA, so the ratio is not a precision difference.

Printed: a Markdown table of median seconds per phase (after ``--warmup`` iterations of each;
the two sides alternate) for both, the ratio HF-style / rlgf, and the peak memory of each side
(``torch.cuda.max_memory_allocated`` on CUDA; on CPU the process's ``ru_maxrss`` — rlgf's read
after its first iteration, before the HF-style loop has run; the HF-style value is the process
high-water mark, so it includes rlgf's).

Tokenizer: a word-level tokenizer built in memory with exactly GPT-2's vocabulary size
(50,257 = 50,256 words ``w0`` … ``w50255`` and ``<|endoftext|>``, which is also the pad
token, as in GPT-2), so prompts are exactly 64 tokens, every sampled id decodes to text and
the LM head and the sampling work over the real vocabulary. The reward is the share of the
digit ``7`` in the completion text (cheap, so the reward phase measures the plumbing).

    # CPU, a tiny config (seconds)
    OMP_NUM_THREADS=1 .venv/bin/python bench/iteration.py --preset tiny
    # one GPU, the paper's shape
    .venv/bin/python bench/iteration.py --device cuda --preset paper --repeats 5 --json runs/bench-iteration.json

Goal (issue 7, one H100): ≤ 0.5 s per iteration and ≥ 5× faster than the HF-style loop.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from backends.base import Sampling  # noqa: E402
from tasks.base import Example, Task  # noqa: E402

SAMPLING = Sampling(do_sample=True, top_k=50)

PRESETS = {
    # the paper's IMDB shape on GPT-2-124M (GPT2Config defaults: 12 layers, 768 wide, 12 heads)
    "paper": dict(n_layer=12, n_embd=768, n_head=12, vocab_size=50257, episodes=112, prompt_tokens=64,
                  new_tokens=48, epochs=5, minibatches=4),
    # the same structure, small enough for a CPU test in seconds
    "tiny": dict(n_layer=2, n_embd=64, n_head=2, vocab_size=1024, episodes=16, prompt_tokens=16,
                 new_tokens=8, epochs=5, minibatches=4),
}
PHASES = ("roll_in", "roll_out", "reward", "forward", "update")
LABELS = {
    "roll_in": "roll-in (guide forward passes)",
    "roll_out": "roll-out (learner generation, encode + decode)",
    "reward": "reward",
    "forward": "old + reference log-probs, values, advantages",
    "update": "update ({epochs} epochs × {minibatches} minibatches of {minibatch})",
    "total": "**iteration**",
}
GOAL_SECONDS, GOAL_RATIO = 0.5, 5.0


# -- models and task ------------------------------------------------------------------------------
def word_tokenizer(vocab_size: int):
    """A word-level tokenizer with ``vocab_size`` entries: words ``w0`` … and ``<|endoftext|>`` last.

    ``<|endoftext|>`` is the end, pad and unknown token (GPT-2 has one special token too).
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    eos = "<|endoftext|>"
    vocab = {f"w{i}": i for i in range(vocab_size - 1)}
    vocab[eos] = vocab_size - 1
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=eos))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token=eos, pad_token=eos, unk_token=eos)
    return tok


def gpt2_from_config(preset: dict, tokenizer, seed: int, device):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=preset["vocab_size"], n_layer=preset["n_layer"], n_embd=preset["n_embd"],
                        n_head=preset["n_head"], bos_token_id=tokenizer.eos_token_id,
                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    return GPT2LMHeadModel(config).eval().to(device)


class BenchTask(Task):
    """Prompts of exactly ``prompt_tokens`` random words; reward = share of the digit 7 in the text."""

    name = "bench-iteration"
    description = "synthetic prompts for bench/iteration.py"
    reward_name = "digit-7 share"
    train_sampling = SAMPLING

    def __init__(self, n: int, prompt_tokens: int, new_tokens: int, vocab_words: int, seed: int = 0) -> None:
        self.prompt_max_tokens = prompt_tokens
        self.max_new_tokens = self.min_new_tokens = new_tokens
        gen = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, vocab_words, (n, prompt_tokens), generator=gen).tolist()
        self._examples = [Example(prompt=" ".join(f"w{i}" for i in row), references=()) for row in ids]

    def examples(self, split: str) -> list[Example]:
        return list(self._examples)

    def reward(self, prompts: Sequence[str], completions: Sequence[str], examples: Sequence[Example]) -> list[float]:
        return [text.count("7") / max(len(text), 1) for text in completions]


# -- timing helpers -----------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device):
    """The same precision policy as the Trainer: bf16 autocast on CUDA, float32 elsewhere."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class ForwardTimer:
    """Seconds spent in one model's forward passes (the guide's: the rlgf roll-in, which runs in
    lock-step with the learner's roll-out, so it has no ``generate`` call of its own to time)."""

    def __init__(self, policy, device: torch.device) -> None:
        self.seconds = 0.0
        self._start = 0.0

        def pre(module, args):
            sync(device)
            self._start = time.perf_counter()

        def post(module, args, output):
            sync(device)
            self.seconds += time.perf_counter() - self._start

        policy.model.register_forward_pre_hook(pre)
        policy.model.register_forward_hook(post)


def peak_memory(device: torch.device) -> int:
    """Peak bytes: CUDA allocations since the last reset, else the process's max RSS so far."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss) if sys.platform == "darwin" else int(rss) * 1024


def reset_peak(device: torch.device) -> None:
    """Start a new CUDA peak (no ``empty_cache``: the next run would pay for fresh allocations)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


# -- the HF-style loop ------------------------------------------------------------------------
class HFStyleLoop:
    """The straightforward loop: generate twice, score with full forward passes, PPO update."""

    def __init__(self, policy, reference, critic, guide, task: BenchTask, cfg, alg: str, beta: float) -> None:
        self.policy, self.reference, self.critic, self.guide = policy, reference, critic, guide
        self.tok = policy.tokenizer
        self.task, self.cfg, self.alg, self.beta = task, cfg, alg, beta
        self.device = policy.device
        params = [p for p in policy.model.parameters() if p.requires_grad]
        params += [p for p in critic.parameters() if p.requires_grad]
        self.params = params
        self.optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        self.autocast = autocast(self.device)

    # plain scoring: the full sequence through the model, then slice the response positions
    def _logprobs(self, model, ids, mask, q_len: int, with_entropy: bool = False):
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False).logits
        logp = torch.log_softmax(logits[:, q_len - 1:-1].float(), dim=-1)
        lp = logp.gather(-1, ids[:, q_len:].unsqueeze(-1)).squeeze(-1)
        if not with_entropy:
            return lp
        return lp, -(logp.exp() * logp).sum(-1)

    def _values(self, ids, mask, q_len: int):
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        hidden = self.critic.body(input_ids=ids, attention_mask=mask, position_ids=positions,
                                  use_cache=False).last_hidden_state
        return self.critic.value_head(hidden[:, q_len - 1:-1].float()).squeeze(-1)

    def _generate(self, model, ids, mask, new_tokens: int, processors=None):
        from transformers import LogitsProcessorList

        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, top_k=SAMPLING.top_k,
                             temperature=1.0, top_p=1.0, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                             pad_token_id=self.tok.pad_token_id, eos_token_id=self.tok.eos_token_id,
                             logits_processor=LogitsProcessorList(processors or []))
        return out[:, ids.shape[1]:]

    def iteration(self, examples: list[Example], seed: int) -> dict:
        from transformers import LogitsProcessor

        from rlgf_cli.training.ppo import clipped_policy_loss, clipped_value_loss, gae, kl_penalised_rewards, masked_whiten

        cfg, dev, L = self.cfg, self.device, self.task.max_new_tokens
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        sync(dev)
        t0 = time.perf_counter()
        prompts = [ex.prompt for ex in examples]
        self.policy.model.eval()
        enc = self.tok(prompts, padding=True, truncation=True, max_length=self.task.prompt_max_tokens,
                       add_special_tokens=False, return_tensors="pt")
        query, qmask = enc["input_ids"].to(dev), enc["attention_mask"].to(dev)
        n, q_len = query.shape
        # 1. roll-in: the guide generates up to the largest restart point for the β share of episodes
        forced = torch.zeros((n, L), dtype=torch.long, device=dev)
        k = torch.zeros(n, dtype=torch.long, device=dev)
        rows = (torch.rand(n, generator=gen) < self.beta).nonzero().flatten() if self.alg == "ppo++" else []
        ks = torch.randint(0, L, (len(rows),), generator=gen)
        sync(dev)
        t_in = time.perf_counter()  # the roll-in is the guide's generate only (as on the rlgf side)
        with torch.no_grad(), self.autocast:
            if len(rows) and int(ks.max()) > 0:
                rows_d = rows.to(dev)
                roll_in = self._generate(self.guide.model, query[rows_d], qmask[rows_d], int(ks.max()))
                forced[rows_d, :roll_in.shape[1]] = roll_in
                k[rows_d] = ks.to(dev)
        sync(dev)
        t1 = time.perf_counter()

        # 2. roll-out: the learner generates the whole response again, the roll-in tokens forced
        class ForcePrefix(LogitsProcessor):
            def __call__(self, input_ids, scores):
                t = input_ids.shape[1] - q_len
                if t >= L:
                    return scores
                only = torch.full_like(scores, float("-inf")).scatter_(1, forced[:, t:t + 1], 0.0)
                return torch.where((k > t)[:, None], only, scores)

        with torch.no_grad(), self.autocast:
            response = self._generate(self.policy.model, query, qmask, L, [ForcePrefix()] if len(rows) else None)
        completions = self.tok.batch_decode(response, skip_special_tokens=True)
        sync(dev)
        t2 = time.perf_counter()
        # 3. reward
        scores = torch.tensor(self.task.reward(prompts, completions, examples), dtype=torch.float32, device=dev)
        sync(dev)
        t3 = time.perf_counter()
        # 4. old and reference log-probs, values, KL-penalised rewards, GAE
        ids = torch.cat([query, response], 1)
        mask = torch.cat([qmask, torch.ones_like(response)], 1)
        rmask = torch.ones_like(response, dtype=torch.float32)
        learner = (torch.arange(L, device=dev)[None, :] >= k[:, None]).float()
        lp, ref, val = [], [], []
        with torch.no_grad(), self.autocast:
            for s in range(0, n, cfg.rollout_batch_size):
                sl = slice(s, s + cfg.rollout_batch_size)
                lp.append(self._logprobs(self.policy.model, ids[sl], mask[sl], q_len))
                ref.append(self._logprobs(self.reference.model, ids[sl], mask[sl], q_len))
                val.append(self._values(ids[sl], mask[sl], q_len))
        old_lp, ref_lp, old_val = torch.cat(lp).float(), torch.cat(ref).float(), torch.cat(val).float()
        rewards, _ = kl_penalised_rewards(scores, old_lp, ref_lp, rmask, cfg.kl_coef, kl_mask=learner)
        adv, returns = gae(rewards, old_val, rmask, cfg.gamma, cfg.lam)
        adv = masked_whiten(adv, learner)
        sync(dev)
        t4 = time.perf_counter()
        # 5. PPO epochs over minibatches
        for _ in range(cfg.epochs):
            perm = torch.randperm(n, generator=gen).to(dev)
            for s in range(0, n, cfg.minibatch_size):
                idx = perm[s:s + cfg.minibatch_size]
                with self.autocast:
                    new_lp, entropy = self._logprobs(self.policy.model, ids[idx], mask[idx], q_len, with_entropy=True)
                    values = self._values(ids[idx], mask[idx], q_len)
                pol = clipped_policy_loss(new_lp, old_lp[idx], adv[idx], learner[idx], cfg.clip_range)
                v_loss = clipped_value_loss(values, old_val[idx], returns[idx], learner[idx], cfg.clip_range_value)
                ent = (entropy * learner[idx]).sum() / learner[idx].sum().clamp(min=1)
                loss = pol.pg_loss - cfg.ent_coef * ent + cfg.vf_coef * v_loss
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
                self.optimizer.step()
        float(loss.detach())
        sync(dev)
        t5 = time.perf_counter()
        return {"roll_in": t1 - t_in, "roll_out": (t2 - t0) - (t1 - t_in), "reward": t3 - t2, "forward": t4 - t3,
                "update": t5 - t4, "total": t5 - t0}


# -- the run ------------------------------------------------------------------------------------
def build(args):
    from backends.hf.critic import Critic
    from backends.hf.policy import HFPolicy
    from rlgf_cli.runtime import set_seed
    from rlgf_cli.training.config import TrainConfig
    from rlgf_cli.training.trainer import Trainer

    preset = dict(PRESETS[args.preset])
    if args.episodes:
        preset["episodes"] = args.episodes
    episodes = preset["episodes"]
    minibatch = max(1, episodes // preset["minibatches"])
    device = torch.device(args.device)
    set_seed(args.seed)
    tok = word_tokenizer(preset["vocab_size"])
    policy = HFPolicy(gpt2_from_config(preset, tok, args.seed, device), tok, spec="gpt2-config")
    reference = HFPolicy(copy.deepcopy(policy.model), tok, spec="gpt2-config (reference)")
    guide = HFPolicy(gpt2_from_config(preset, tok, args.seed + 1, device), tok, spec="gpt2-config (guide)")
    critic = Critic.from_policy(policy)
    task = BenchTask(episodes * 4, preset["prompt_tokens"], preset["new_tokens"], preset["vocab_size"] - 1, args.seed)
    cfg = TrainConfig(task=task.name, alg=args.alg, guide="gpt2-config" if args.alg != "ppo" else None,
                      iterations=1_000_000, episodes=episodes, epochs=preset["epochs"], minibatch_size=minibatch,
                      rollout_batch_size=args.rollout_batch or episodes, max_new_tokens=preset["new_tokens"],
                      beta=args.beta, seed=args.seed, device=args.device, save_every=0,
                      cuda_graphs=args.cuda_graphs).validate()
    trainer = Trainer(cfg, task, policy, reference, critic, guide=guide if args.alg != "ppo" else None)
    baseline = HFStyleLoop(policy, reference, critic, guide, task, cfg, args.alg, args.beta)
    return preset, cfg, task, trainer, baseline


def run_rlgf(trainer, timer: ForwardTimer | None, device) -> dict:
    """One ``Trainer.step()``; phases from its metrics, the roll-in from the guide's forward passes."""
    if timer is not None:
        timer.seconds = 0.0
    sync(device)
    t = time.perf_counter()
    m = trainer.step()
    sync(device)
    total = time.perf_counter() - t
    roll_in = timer.seconds if timer is not None else 0.0
    return {"roll_in": roll_in, "roll_out": m["time_rollout_s"] - roll_in, "reward": m["time_reward_s"],
            "forward": m["time_forward_s"], "update": m["time_update_s"], "total": total}


def medians(runs: list[dict]) -> dict:
    return {key: statistics.median(r[key] for r in runs) for key in (*PHASES, "total")}


def gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def markdown(result: dict) -> str:
    r, b, ratio = result["rlgf"], result["hf_style"], result["ratio"]
    shape = result["shape"]
    lines = [
        "| phase | rlgf s | HF-style s | ratio (HF-style / rlgf) |",
        "|---|---:|---:|---:|",
    ]
    for key in (*PHASES, "total"):
        label = LABELS[key].format(**shape)
        cell = f"{ratio[key]:.2f}×" if ratio[key] is not None else "–"
        if key == "total":
            lines.append(f"| {label} | **{r[key]:.3f}** | **{b[key]:.3f}** | **{cell}** |")
        else:
            lines.append(f"| {label} | {r[key]:.3f} | {b[key]:.3f} | {cell} |")
    mem = result["peak_memory_bytes"]
    lines.append(f"| peak memory ({result['peak_memory_kind']}) | {gib(mem['rlgf'])} | {gib(mem['hf_style'])} | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="see the module docstring (bench/iteration.py) for what each side does")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--preset", choices=sorted([*PRESETS, "embedded"]), default="tiny",
                   help="paper: GPT-2-124M, 112 episodes × 64 + 48 tokens; tiny: a 2-layer config, 16 × 16 + 8; "
                        "embedded: the cached SmolLM2 on rotten-tomatoes in fp32 and bf16 (bench/iteration_embedded.py)")
    p.add_argument("--repeats", type=int, default=3, help="timed iterations per side (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed iterations per side first")
    p.add_argument("--alg", choices=["ppo++", "ppo"], default="ppo++",
                   help="ppo++: a guide rolls in (generate twice); ppo: the learner alone (generate once)")
    p.add_argument("--beta", type=float, default=0.2, help="PPO++ mixing probability β (paper: 0.2)")
    p.add_argument("--episodes", type=int, default=0, help="override the preset's episodes per iteration")
    p.add_argument("--rollout-batch", type=int, default=0, help="episodes per generation chunk (default: all)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cuda-graphs", action="store_true", help="rlgf side: decoding steps replayed as CUDA graphs")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--compile", action="store_true",
                   help="embedded preset: also run each precision as `rlgf train --compile` trains, and compare")
    args = p.parse_args(argv)
    if args.preset == "embedded":  # a different benchmark: fp32 against bf16 on the real default
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import iteration_embedded

        return iteration_embedded.main(args)
    if args.repeats < 1 or args.warmup < 0:
        p.error("--repeats must be >= 1 and --warmup >= 0")
    if args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            p.error("--device cuda: no CUDA device here")
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if args.threads:
        torch.set_num_threads(args.threads)

    preset, cfg, task, trainer, baseline = build(args)
    device = trainer.device
    # plain PPO has no roll-in: the learner's one generate is the roll-out
    timer = ForwardTimer(trainer.guide, device) if trainer.guide is not None else None
    examples = task.examples("train")

    # the two sides alternate (rlgf, HF-style, rlgf, …) so load drift on a shared machine hits
    # both alike; each side runs with only its own AdamW state resident (the other's is dropped),
    # so its CUDA peak memory counts the four models, its optimizer state and its activations
    runs_rlgf, runs_hf, mem = [], [], {"rlgf": 0, "hf_style": 0}
    n = cfg.episodes
    for i in range(args.warmup + args.repeats):
        baseline.optimizer.state.clear()
        reset_peak(device)
        run = run_rlgf(trainer, timer, device)
        # CPU: ru_maxrss only grows, so rlgf's peak is read before the HF-style loop first runs
        mem["rlgf"] = max(mem["rlgf"], peak_memory(device)) if device.type == "cuda" or i == 0 else mem["rlgf"]
        if i >= args.warmup:
            runs_rlgf.append(run)
        trainer.optimizer.state.clear()
        reset_peak(device)
        start = (i * n) % len(examples)
        run = baseline.iteration((examples + examples)[start:start + n], seed=args.seed * 1000 + i)
        mem["hf_style"] = max(mem["hf_style"], peak_memory(device))
        if i >= args.warmup:
            runs_hf.append(run)
    mem_rlgf, mem_hf = mem["rlgf"], mem["hf_style"]

    r, b = medians(runs_rlgf), medians(runs_hf)
    ratio = {k: (b[k] / r[k] if r[k] > 1e-9 else None) for k in r}
    n_params = sum(p.numel() for p in trainer.policy.model.parameters())
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu")
    shape = dict(episodes=n, prompt_tokens=preset["prompt_tokens"], new_tokens=preset["new_tokens"],
                 epochs=cfg.epochs, minibatches=-(-n // cfg.minibatch_size), minibatch=cfg.minibatch_size,
                 rollout_batch=cfg.rollout_batch_size, vocab_size=preset["vocab_size"], n_layer=preset["n_layer"],
                 n_embd=preset["n_embd"], alg=args.alg, beta=args.beta if args.alg == "ppo++" else None)
    result = {
        "preset": args.preset, "device": str(device), "device_name": dev_name, "threads": torch.get_num_threads(),
        "allocator": __import__("backends.allocator", fromlist=["current"]).current(),
        "precision": "bf16 autocast" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "float32",
        "parameters_per_model": n_params, "shape": shape, "repeats": args.repeats, "warmup": args.warmup,
        "rlgf": r, "hf_style": b, "ratio": ratio,
        "peak_memory_bytes": {"rlgf": mem_rlgf, "hf_style": mem_hf},
        "peak_memory_kind": "torch.cuda.max_memory_allocated" if device.type == "cuda" else "ru_maxrss of the process",
        "runs": {"rlgf": runs_rlgf, "hf_style": runs_hf},
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__},
    }
    goal_time, goal_ratio = r["total"] <= GOAL_SECONDS, (ratio["total"] or 0) >= GOAL_RATIO
    result["goal"] = {"seconds": GOAL_SECONDS, "ratio": GOAL_RATIO, "seconds_met": goal_time, "ratio_met": goal_ratio}

    beta = f", β = {args.beta:g}" if args.alg == "ppo++" else ""
    print(f"# one training iteration — preset `{args.preset}`, {args.alg}{beta}")
    print()
    print(f"GPT-2 config {preset['n_layer']} layers × {preset['n_embd']} wide, vocabulary {preset['vocab_size']} "
          f"({n_params / 1e6:.1f}M parameters per model; policy, critic, reference"
          f"{', guide' if args.alg == 'ppo++' else ''}); {n} episodes × {preset['prompt_tokens']} prompt + "
          f"{preset['new_tokens']} new tokens, {SAMPLING.describe()}; {cfg.epochs} epochs × "
          f"{shape['minibatches']} minibatches of {cfg.minibatch_size}")
    print(f"device {device} ({dev_name}), {result['precision']}, {result['threads']} CPU threads; "
          f"median of {args.repeats} after {args.warmup} warm-up; torch {torch.__version__}, "
          f"transformers {result['versions']['transformers']}")
    print()
    print(markdown(result))
    print()
    if device.type == "cuda":
        print(f"goal (one H100): ≤ {GOAL_SECONDS} s per iteration — {'met' if goal_time else 'not met'}; "
              f"≥ {GOAL_RATIO:g}× the HF-style loop — {'met' if goal_ratio else 'not met'}")
    else:
        print(f"(the goal — ≤ {GOAL_SECONDS} s per iteration and ≥ {GOAL_RATIO:g}× the HF-style loop — is for "
              "one H100; on CPU peak memory is the process's high-water mark, so the HF-style column includes rlgf's)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    from backends.allocator import maybe_reexec

    maybe_reexec()  # tcmalloc, as `rlgf` itself runs (backends/allocator.py)
    raise SystemExit(main())

"""How far bf16 moves a model from its float32 self, per token — a measure without sampling noise.

A reward curve cannot tell small precision effects from the noise of 32 sampled episodes (see
``precision_learning.py``); the model's own distribution can. This samples completions of the
embedded default's training prompts from the float32 model (cached SmolLM2-135M, Rotten Tomatoes,
24 new tokens), then scores the very same tokens with each way rlgf can hold the model under
``--precision bf16`` and reports, over the response tokens:

- the mean per-token KL(float32 ‖ bf16 variant) over the whole vocabulary,
- the mean and largest |Δ log p| of the sampled tokens,
- the seconds of one no-grad forward over the batch.

Variants: the learner under autocast (float32 weights: what the update and forward scoring
compute), a frozen model as rlgf holds it (bf16 matrices, float32 embeddings and norms: the
reference, a guide, the learner's decoding copy), and all-bf16 weights (how rlgf held frozen
models before). The last line is the disagreement that matters for PPO: between the learner
under autocast (which computes old and new log-probabilities) and its decoding copy (which
samples the episodes).

    .venv/bin/python bench/precision_drift.py --out bench/results/<machine>/precision-drift.json
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def tokens(policy, prompts: list[str], new_tokens: int, seed: int):
    """Left-padded prompts plus ``new_tokens`` sampled from the float32 model: ids, mask, positions, response mask."""
    import torch

    tok = policy.tokenizer
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True)
    torch.manual_seed(seed)
    with torch.no_grad():
        ids = policy.model.generate(**enc, max_new_tokens=new_tokens, do_sample=True, top_k=0, top_p=1.0,
                                    pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    width = enc["input_ids"].shape[1]
    response = ids[:, width:]
    done = (response == tok.eos_token_id).long().cumsum(1)
    response_mask = ((done == 0) | ((done == 1) & (response == tok.eos_token_id))).long()  # through the first EOS
    mask = torch.cat([enc["attention_mask"], response_mask], 1)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, positions, width, response_mask


def response_logprobs(model, ids, mask, positions, width, autocast):
    import torch

    with torch.no_grad(), autocast:
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False).logits
    return torch.log_softmax(logits[:, width - 1:-1].float(), dim=-1)


def compare(ref, other, ids, width, response_mask) -> dict:
    import torch

    on = response_mask.bool()
    kl = (ref.exp() * (ref - other)).sum(-1)
    target = ids[:, width:].unsqueeze(-1)
    delta = (ref.gather(-1, target) - other.gather(-1, target)).squeeze(-1).abs()
    return {"kl_per_token": float(kl[on].mean()), "abs_dlogp_mean": float(delta[on].mean()),
            "abs_dlogp_max": float(delta[on].max()), "tokens": int(on.sum())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--learner", default="smollm2")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    import torch

    from backends import resolve
    from backends.precision import Precision, decoding_copy, use_kernels
    from rlgf_cli.training.config import build_config
    from rlgf_cli.training.run import build_task

    if args.threads:
        torch.set_num_threads(args.threads)
    bf16 = Precision("bf16", "bench")
    cfg = build_config(None, task="rotten-tomatoes", alg="ppo", learner=args.learner, iterations=1, device="cpu")
    task = build_task(cfg)  # its prompts only: no reward is computed here
    prompts = [e.prompt for e in task.examples("train")[: args.prompts]]
    policy = resolve(args.learner, device="cpu")
    model = policy.model.eval()
    ids, mask, positions, width, response_mask = tokens(policy, prompts, args.new_tokens, args.seed)

    learner = copy.deepcopy(model)
    use_kernels(learner, bf16)
    held = decoding_copy(policy, bf16).model  # what the trainer samples from under bf16
    all_bf16 = copy.deepcopy(model).to(torch.bfloat16)
    use_kernels(all_bf16, bf16)
    variants = {
        "learner under autocast (float32 weights)": learner,
        "frozen as rlgf holds it (bf16 matrices, float32 embeddings and norms)": held,
        "frozen with all-bf16 weights (before)": all_bf16,
    }
    ref = response_logprobs(model, ids, mask, positions, width, contextlib.nullcontext())
    rows, scored = [], {}
    for name, m in variants.items():
        scored[name] = response_logprobs(m, ids, mask, positions, width, bf16.autocast())
        tick = time.perf_counter()
        for _ in range(2):
            response_logprobs(m, ids, mask, positions, width, bf16.autocast())
        rows.append({"variant": name, **compare(ref, scored[name], ids, width, response_mask),
                     "forward_s": (time.perf_counter() - tick) / 2})
    names = list(variants)
    mismatch = {"learner vs its decoding copy (now)": compare(scored[names[0]], scored[names[1]], ids, width,
                                                             response_mask),
                "learner vs its decoding copy (all-bf16, before)": compare(scored[names[0]], scored[names[2]], ids,
                                                                          width, response_mask)}
    print(f"{len(prompts)} prompts x {args.new_tokens} new tokens sampled from float32 {args.learner}, "
          f"{rows[0]['tokens']} response tokens, batch {tuple(ids.shape)}")
    print("| against float32 | KL per token | mean abs dlogp | max abs dlogp | forward s |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['variant']} | {r['kl_per_token']:.2e} | {r['abs_dlogp_mean']:.4f} | {r['abs_dlogp_max']:.3f} "
              f"| {r['forward_s']:.2f} |")
    for name, r in mismatch.items():
        print(f"| {name} | {r['kl_per_token']:.2e} | {r['abs_dlogp_mean']:.4f} | {r['abs_dlogp_max']:.3f} | |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"learner": args.learner, "prompts": len(prompts),
                                              "new_tokens": args.new_tokens, "seed": args.seed,
                                              "threads": torch.get_num_threads(), "rows": rows,
                                              "learner_vs_decoder": mismatch}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""How much faster is the reward classifier's recipe 2 to train than recipe 1?

The MiniLM reward classifier of the embedded default is trained once per machine, and on a
CPU that training is most of a fresh clone's asset preparation. Recipe 2 batches texts of
similar length together and keeps the word embeddings frozen; recipe 1 did neither. This
trains both on the same first ``--texts`` training texts of rotten-tomatoes, in the order
1, 2, 2, 1 (so a machine that speeds up or slows down during the run favours neither), and
prints each recipe's seconds per step, the ratio, and how much of each padded batch was real
tokens. ``--texts 9987`` (the whole split) also reports each classifier's held-out accuracy
on the test split (about 4 + 7 minutes on 2 cores).

    .venv/bin/python bench/classifier_training.py --texts 1280 --out runs/bench-classifier
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RECIPES = {
    "recipe 1": {"group_by_length": False, "freeze_embeddings": False},
    "recipe 2": {"group_by_length": True, "freeze_embeddings": True},
}


def padding_efficiency(lengths, config) -> float:
    import torch

    from tasks.scoring.classifier_training import length_grouped_batches

    batches = length_grouped_batches(lengths, config.batch_size, torch.Generator().manual_seed(config.seed),
                                     grouped=config.group_by_length)
    return sum(lengths[i] for b in batches for i in b) / sum(max(lengths[i] for i in b) * len(b) for b in batches)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts", type=int, default=1280, help="training texts per run (default 1280 = 40 steps)")
    parser.add_argument("--out", default="runs/bench-classifier", help="folder for results.json")
    args = parser.parse_args(argv)

    from transformers import AutoTokenizer

    from tasks.rotten_tomatoes import RottenTomatoesTask
    from tasks.scoring.classifier_training import TrainingConfig, train_classifier
    from tasks.scoring.sentiment_reward import encoder_path

    splits = RottenTomatoesTask().splits()
    train = [(r.text, r.label) for r in splits["train"]][: max(32, args.texts)]
    full = len(train) == len(splits["train"])
    test = [(r.text, r.label) for r in splits["test"]][: None if full else 64]
    tokenizer = AutoTokenizer.from_pretrained(str(encoder_path()))
    results: dict[str, dict] = {name: {"train_seconds": [], "test_accuracy": []} for name in RECIPES}
    scratch = Path(tempfile.mkdtemp(prefix="rlgf-bench-classifier-"))
    try:
        for name in ["recipe 1", "recipe 2", "recipe 2", "recipe 1"]:
            config = TrainingConfig(**RECIPES[name])
            facts = train_classifier(train, test, scratch / "model", config=config)
            shutil.rmtree(scratch / "model", ignore_errors=True)
            results[name]["train_seconds"].append(facts["train_seconds"])
            results[name]["test_accuracy"].append(facts["test_accuracy"])
            results[name]["steps"] = facts["steps"]
            print(f"{name}: {facts['train_seconds']:.1f} s for {facts['steps']} steps", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    lengths = [len(ids) for ids in tokenizer([t for t, _ in train], truncation=True, max_length=64)["input_ids"]]
    print(f"\n{len(train)} texts, batches of 32\n")
    print("| recipe | s / step | real tokens per padded token |" + (" test accuracy |" if full else ""))
    print("|---|---:|---:|" + ("---:|" if full else ""))
    for name, row in results.items():
        row["seconds_per_step"] = sum(row["train_seconds"]) / (len(row["train_seconds"]) * row["steps"])
        row["padding_efficiency"] = padding_efficiency(lengths, TrainingConfig(**RECIPES[name]))
        acc = f" {sum(row['test_accuracy']) / len(row['test_accuracy']):.4f} |" if full else ""
        print(f"| {name} | {row['seconds_per_step']:.3f} | {row['padding_efficiency']:.2f} |{acc}")
    speedup = results["recipe 1"]["seconds_per_step"] / results["recipe 2"]["seconds_per_step"]
    print(f"\nrecipe 2 trains {speedup:.2f}× faster per step than recipe 1 (same run)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"texts": len(train), "speedup": speedup, **results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    from backends.allocator import maybe_reexec

    maybe_reexec()  # tcmalloc, as `rlgf` itself runs (backends/allocator.py)
    raise SystemExit(main())

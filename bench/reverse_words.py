"""Write ``tasks/examples/reverse_words.jsonl``: a task whose reward is sparse, for the reproduction.

Each prompt shows one example of reversing three words and asks for another three; the reward
(``tasks/examples/exact_match.py``) is 1 only when the completion's first line is exactly the
reversed words. The embedded SmolLM2 gets 1.5 % of the test prompts right by sampling (run 18),
so plain PPO sees few rewards, while a guide that has seen 64 references gets two thirds right: the
setting the paper's guided roll-ins and roll-outs are meant for (exploration under a sparse
reward). Deterministic: the same seed writes the same file.

    python bench/reverse_words.py                       # 1000 rows: 700 train, 100 val, 200 test
    python bench/reverse_words.py --words 4 --out FILE  # harder: four words
"""

import argparse
import json
import random
from pathlib import Path

WORDS = """apple river cloud stone bird lamp table green house music window garden paper orange silver winter
summer chair bread horse candle forest ocean mountain pencil yellow purple tiger rabbit coffee letter
bottle flower engine planet rocket doctor farmer castle bridge island desert valley butter cookie dragon
wizard pirate guitar piano violin camera mirror basket blanket pillow carpet ladder hammer button pocket
jacket sweater helmet bucket shovel kettle saucer spoon fork knife plate glass honey lemon cherry melon""".split()


def rows(n: int, words: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        shown, asked = rng.sample(WORDS, words), rng.sample(WORDS, words)
        prompt = (f"Reverse the order of the words.\n{' '.join(shown)} -> {' '.join(reversed(shown))}\n"
                  f"{' '.join(asked)} ->")
        split = "train" if i < 0.7 * n else "val" if i < 0.8 * n else "test"
        out.append({"prompt": prompt, "reference": " " + " ".join(reversed(asked)), "split": split})
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1000)
    p.add_argument("--words", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "tasks" / "examples" / "reverse_words.jsonl"))
    args = p.parse_args(argv)
    lines = [json.dumps(r) for r in rows(args.rows, args.words, args.seed)]
    Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {len(lines)} rows to {args.out}")


if __name__ == "__main__":
    main()

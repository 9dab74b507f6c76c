"""An example reward for ``--task prompts``: how upbeat a completion reads, from a small word list.

No model and no download: (1 + positive − negative) / (2 + positive + negative) over the
completion's words, so 0.5 is neutral, more positive words move it toward 1 and negative ones
toward 0. Use it as ``--reward tasks/examples/upbeat.py:reward``; a reward of your own has the
same signature: three lists of the same length in, one number per completion out.
"""

POSITIVE = {
    "amazing", "beautiful", "best", "brilliant", "captivating", "charming", "clever", "compelling", "delightful",
    "enjoyable", "excellent", "fantastic", "fine", "fun", "funny", "good", "gorgeous", "great", "heartfelt",
    "impressive", "inspired", "love", "lovely", "masterful", "moving", "perfect", "pleasure", "powerful",
    "remarkable", "rewarding", "satisfying", "smart", "stunning", "superb", "terrific", "thrilling", "touching",
    "triumph", "warm", "wonderful", "worth",
}
NEGATIVE = {
    "awful", "bad", "bland", "boring", "clumsy", "dull", "failure", "flat", "forgettable", "hollow", "lame", "mess",
    "mediocre", "pointless", "poor", "predictable", "shallow", "silly", "slow", "stupid", "tedious", "terrible",
    "tiresome", "ugly", "unfunny", "waste", "weak", "worse", "worst",
}


def reward(prompts, completions, references):
    scores = []
    for text in completions:
        words = [w.strip(".,!?;:'\"()-").lower() for w in text.split()]
        pos = sum(w in POSITIVE for w in words)
        neg = sum(w in NEGATIVE for w in words)
        scores.append((1 + pos - neg) / (2 + pos + neg))
    return scores

"""An example of a partial-credit reward for ``--task prompts``: the share of the reference's words
that the completion's first line has at the same place, counted over the longer of the two (so an
extra word costs as much as a missing one). Against " tiger lemon dragon": "tiger lemon dragon"
scores 1, "tiger lemon" 2/3, "tiger lemon dragon lamp" 3/4, "dragon lemon tiger" 1/3 (only "lemon" is
in its place) and "" 0. Words are compared exactly; spaces between them do not count.

The dense counterpart of ``exact_match.py`` (which gives 1 only for the whole answer): use it as
``--reward tasks/examples/word_match.py:reward`` with ``tasks/examples/reverse_words.jsonl``. A row
may have several references (a list); the best of them counts.
"""


def score(answer: str, reference: str) -> float:
    got, want = answer.split(), reference.split()
    if not got and not want:
        return 1.0
    same = sum(a == b for a, b in zip(got, want))
    return same / max(len(got), len(want))


def reward(prompts, completions, references):
    scores = []
    for completion, refs in zip(completions, references):
        refs = [refs] if isinstance(refs, str) else list(refs or [])
        answer = completion.split("\n", 1)[0]
        scores.append(max((score(answer, ref) for ref in refs), default=0.0))
    return scores

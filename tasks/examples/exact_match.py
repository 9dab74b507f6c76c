"""An example of a sparse reward for ``--task prompts``: 1 when the completion's first line is
exactly a reference (surrounding spaces ignored), else 0.

Use it as ``--reward tasks/examples/exact_match.py:reward`` with a prompts file whose rows
have a ``reference`` (e.g. ``tasks/examples/reverse_words.jsonl``). A row may have several
references (a list); any of them counts.
"""


def reward(prompts, completions, references):
    scores = []
    for completion, refs in zip(completions, references):
        refs = [refs] if isinstance(refs, str) else list(refs or [])
        answer = completion.split("\n", 1)[0].strip()
        scores.append(1.0 if any(answer == ref.strip() for ref in refs) else 0.0)
    return scores

"""Evaluation: generate on a split and compute the task's metrics, for one or more policies."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch

from backends.base import Sampling, TokenPolicy
from backends.errors import RlgfError
from tasks.base import Task

from .checkpoint import is_checkpoint, read_state, set_seed
from .tensors import chunks

Progress = Callable[[int, int], None]


def policy_label(spec: str) -> str:
    return spec


def reference_spec_for(spec: str, task: Task) -> str:
    """The frozen initial model for ``output_perplexity``: the learner a checkpoint started from."""
    path = Path(spec)
    if path.is_dir() and is_checkpoint(path):
        learner = read_state(path).get("learner")
        if learner:
            return learner
    return task.default_learner


def generate(
    policy,
    prompts: list[str],
    task: Task,
    *,
    sampling: Sampling,
    max_new_tokens: int,
    min_new_tokens: int,
    batch_size: int,
    progress: Progress | None = None,
) -> list[str]:
    out: list[str] = []
    for sl in chunks(len(prompts), batch_size):
        if isinstance(policy, TokenPolicy):
            q, qm = policy.encode_prompts(prompts[sl], task.prompt_max_tokens)
            q, qm = q.to(policy.device), qm.to(policy.device)
            with torch.no_grad():
                r, rm = policy.generate(
                    q, qm, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens, sampling=sampling
                )
            out.extend(policy.decode(r, rm))
        else:
            out.extend(
                policy.complete(
                    prompts[sl], max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens, sampling=sampling
                )
            )
        if progress:
            progress(len(out), len(prompts))
    return out


def decoding_for(policy, task: Task, override: Sampling | None) -> Sampling:
    sampling = override or task.eval_sampling
    if sampling.num_beams > 1 and not getattr(policy, "can_beam_search", False):
        return replace(sampling, num_beams=1, do_sample=False, temperature=0.0)
    return sampling


def evaluate_policy(
    policy,
    label: str,
    task: Task,
    *,
    split: str = "test",
    limit: int | None = None,
    seed: int = 0,
    reference=None,
    sampling: Sampling | None = None,
    batch_size: int = 32,
    progress: Progress | None = None,
) -> dict:
    """Generate for the first ``limit`` examples of ``split`` and compute the task's metrics."""
    examples = task.examples(split)
    if limit is not None:
        examples = examples[:limit]
    if not examples:
        raise RlgfError(f"the {split} split of {task.name} is empty", "check --split and --limit")
    prompts = [ex.prompt for ex in examples]
    decoding = decoding_for(policy, task, sampling)
    set_seed(seed)
    max_new = task.max_new_tokens
    completions = generate(
        policy,
        prompts,
        task,
        sampling=decoding,
        max_new_tokens=max_new,
        min_new_tokens=min(task.min_new_tokens, max_new),
        batch_size=batch_size,
        progress=progress,
    )
    scorer = policy if isinstance(policy, TokenPolicy) else None
    metrics = task.metrics(prompts, completions, examples, policy=scorer, reference_policy=reference)
    return {
        "policy": label,
        "task": task.name,
        "split": split,
        "n": len(examples),
        "decoding": decoding.describe(),
        "metrics": {k: float(v) for k, v in metrics.items()},
        "samples": [
            {"prompt": p, "completion": c, "reference": ex.references[0] if ex.references else ""}
            for p, c, ex in zip(prompts, completions, examples)
        ],
    }


def run_eval(
    specs: list[str],
    *,
    task_name: str | None,
    split: str,
    limit: int | None,
    seed: int,
    reference_spec: str | None,
    task_options: dict,
    device: str,
    batch_size: int,
    quiet: bool = False,
) -> dict:
    """Load each policy in turn and evaluate it on the same prompts; one reference model is shared."""
    from backends import resolve
    from tasks import get_task

    from .progress import CountProgress
    from .run import resolve_device

    dev = resolve_device(device)
    if task_name is None:
        task_name = next(
            (read_state(Path(s)).get("task") for s in specs if Path(s).is_dir() and read_state(Path(s)).get("task")),
            "rotten-tomatoes",
        )
    task = get_task(task_name, **task_options)
    prepare = getattr(task, "prepare", None)
    if prepare is not None:
        prepare()
    ref_spec = reference_spec or reference_spec_for(specs[0], task)
    loaded: dict[str, object] = {}

    def load(spec: str):
        if spec not in loaded:
            loaded[spec] = resolve(spec, device=dev)
        return loaded[spec]

    reference = load(ref_spec)
    results = []
    for spec in specs:
        policy = load(spec)
        with CountProgress(f"eval {spec}", quiet=quiet) as progress:
            results.append(
                evaluate_policy(
                    policy, spec, task, split=split, limit=limit, seed=seed, reference=reference,
                    batch_size=batch_size, progress=progress,
                )
            )
        if spec != ref_spec:
            loaded.pop(spec, None)  # free memory before the next policy
    return {"results": results, "task_info": {"reference_model": ref_spec, **task.info()}}

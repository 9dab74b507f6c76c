"""Evaluation: generate on a split and compute the task's metrics, for one or more policies.

:func:`run_eval` evaluates any number of policies (checkpoint folders, model specs, API
models) on the same prompts, once per seed, and returns the mean (and sample standard
deviation over seeds) of every metric. Decoding follows the task (``task.eval_sampling``:
sampling for the sentiment tasks, beam search for CommonGen) unless overridden with
:func:`resolve_sampling`. Deterministic decoding (greedy, beam) is run once whatever the
number of seeds, since every seed would give the same text. API policies cannot beam-search:
they decode greedily instead (the result's ``decoding`` says so).

The library never prints: progress goes to ``say(text)`` and to ``bar(label)`` context
managers that are called with ``(done, total)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, ContextManager

import torch

from backends.base import Sampling, TokenPolicy
from backends.errors import RlgfError
from backends.precision import freeze_in, resolve_precision
from tasks.base import Example, Task

from rlgf_cli.training.checkpoint import is_checkpoint, read_state
from rlgf_cli.evaluation.decoding import (  # noqa: F401 - re-exported: the decoding helpers used to live here
    DECODING_MODES,
    check_decoding,
    decoding_for,
    describe_decoding,
    resolve_sampling,
)
from rlgf_cli.evaluation.paired import add_paired
from rlgf_cli.evaluation.report import runs_mean_std
from rlgf_cli.evaluation.reward_memo import rewards_once
from rlgf_cli.runtime import resolve_device, set_seed
from rlgf_cli.training.tensors import chunks

Progress = Callable[[int, int], None]
Say = Callable[[str], None]
Bar = Callable[[str], ContextManager[Progress]]

def _silent(text: str) -> None:
    return None


def _no_bar(label: str) -> ContextManager[Progress]:
    import contextlib

    return contextlib.nullcontext(lambda done, total: None)


# -- one policy -----------------------------------------------------------------------


def reference_spec_for(spec: str, task: Task) -> str:
    """The frozen initial model for ``output_perplexity``: the learner a checkpoint started from."""
    path = Path(spec)
    if path.is_dir() and is_checkpoint(path):
        learner = read_state(path).get("learner")
        if learner:
            return learner
    return task.default_learner


#: ``--reference none``: no output_perplexity
NO_REFERENCE = "none"
REFERENCE_METRIC = "output_perplexity"


def load_reference(given: str | None, specs: list[str], task: Task, device: str, say: Say):
    """``(spec, policy, facts)`` of the frozen model that scores ``output_perplexity``.

    Only a task with that metric loads one. ``--reference none`` skips it; a default reference
    (the checkpoint's initial learner, the task's default learner) that cannot load — offline,
    say — leaves the metric out with the reason in ``facts`` (as a missing SPICE is reported);
    a reference asked for by name that cannot load is an error."""
    from backends import resolve

    if REFERENCE_METRIC not in task.metric_names:
        return None, None, {}
    if given is not None and given.strip().lower() == NO_REFERENCE:
        return None, None, {"reference_model": NO_REFERENCE, REFERENCE_METRIC: "not computed (--reference none)"}
    spec = given or reference_spec_for(specs[0], task)
    say(f"reference model for output perplexity: {spec}")
    try:
        return spec, resolve(spec, device=device), {"reference_model": spec}
    except RlgfError as exc:
        if given is not None:
            raise RlgfError(exc.message, f"{exc.hint}; or pass --reference none to skip {REFERENCE_METRIC}"
                            if exc.hint else f"pass --reference none to skip {REFERENCE_METRIC}") from None
        reason = f"the reference model {spec} could not be loaded: {exc.message}"
        say(f"warning: {REFERENCE_METRIC} is left out: {reason}")
        facts = {"reference_model": spec,
                 REFERENCE_METRIC: f"unavailable — {reason} (pass --reference SPEC, or --reference none)"}
        return spec, None, facts


def split_examples(task: Task, split: str, limit: int | None) -> list[Example]:
    examples = task.examples(split)
    if limit is not None:
        examples = examples[:limit]
    if not examples:
        raise RlgfError(f"the {split} split of {task.name} is empty", "check --split and --limit")
    return examples


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
    seed: int | None = None,
) -> list[str]:
    """Completions of ``prompts`` in batches of ``batch_size``. With ``seed``, a local policy
    that can (:attr:`~backends.hf.policy.HFPolicy.takes_row_generators`) samples prompt ``i``
    from its own random stream (seeded by ``seed`` and ``i``), so the completions do not depend
    on the batch size; otherwise the batches draw from the global stream in turn."""
    out: list[str] = []
    streams = seed is not None and isinstance(policy, TokenPolicy) and getattr(policy, "takes_row_generators", False)
    for sl in chunks(len(prompts), batch_size):
        if isinstance(policy, TokenPolicy):
            q, qm = policy.encode_prompts(prompts[sl], task.prompt_max_tokens)
            q, qm = q.to(policy.device), qm.to(policy.device)
            # a batch's streams only (a generator's state is a few kB: not one per prompt of a split at once)
            rows = {"row_generators": [row_stream(seed, i, policy.device) for i in range(sl.start, sl.stop)]} \
                if streams else {}
            with torch.no_grad():
                r, rm = policy.generate(
                    q, qm, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens, sampling=sampling, **rows
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


def generate_for(policy, task: Task, examples: list[Example], *, decoding: Sampling, seed: int, batch_size: int,
                 progress: Progress | None = None) -> list[str]:
    """The policy's completions of ``examples`` with the task's lengths, seeded (each prompt its
    own random stream where the policy can: see :func:`generate`)."""
    set_seed(seed)
    max_new = task.max_new_tokens
    return generate(
        policy, task.prompts_for(examples, policy), task, sampling=decoding, max_new_tokens=max_new,
        min_new_tokens=min(task.min_new_tokens, max_new), batch_size=batch_size, progress=progress, seed=seed,
    )


def row_stream(seed: int, index: int, device) -> torch.Generator:
    """The random stream of prompt ``index`` at sampling ``seed``. The pair is mixed into one
    number (splitmix64's finaliser) because a CPU generator keeps only a seed's low 32 bits."""
    x = (((int(seed) % 2**32) << 32) | (int(index) % 2**32)) + 0x9E3779B97F4A7C15
    x &= 2**64 - 1
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & (2**64 - 1)
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & (2**64 - 1)
    generator = torch.Generator(device=device)
    generator.manual_seed((x ^ (x >> 31)) >> 1)  # 63 bits: manual_seed takes a signed 64-bit value
    return generator


def compute_metrics(task: Task, policy, examples: list[Example], completions: list[str], reference=None) -> dict:
    """The task's metrics, plus ``reward`` (its mean) when the task trains on a custom ``--reward``."""
    scorer = policy if isinstance(policy, TokenPolicy) else None
    prompts = [ex.prompt for ex in examples]
    metrics = task.metrics(prompts, completions, examples, policy=scorer, reference_policy=reference)
    if task.custom_reward is not None and completions:
        values = task.reward(prompts, completions, examples)  # the custom reward (remembered by rewards_once)
        metrics = {**metrics, "reward": sum(values) / len(values)}
    return {k: float(v) for k, v in metrics.items()}


def metric_names(task: Task) -> list[str]:
    """The columns :func:`compute_metrics` fills for ``task``."""
    extra = ["reward"] if task.custom_reward is not None else []
    return [*task.metric_names, *extra]


def reward_runs(task: Task) -> bool:
    """Whether the task's per-sample reward can run here (CommonGen's SPIDEr needs SPICE): where
    it cannot, the metrics still run and generations carry no reward."""
    try:
        task.check_reward()
    except RlgfError:
        return False
    return True


def sample_rows(task: Task, examples: list[Example], completions: list[str], *, seed: int | None = None,
                scores: bool = True) -> list[dict]:
    """One row per generation: prompt, completion, reference(s) and the per-sample reward."""
    prompts = [ex.prompt for ex in examples]
    scores = scores and reward_runs(task)
    rewards = task.reward(prompts, completions, examples) if scores else [None] * len(examples)
    rows = []
    for i, (ex, c, r) in enumerate(zip(examples, completions, rewards)):
        row = {"index": i}
        if seed is not None:
            row["seed"] = seed
        row.update({"prompt": ex.prompt, "completion": c, "reference": ex.references[0] if ex.references else ""})
        if len(ex.references) > 1:
            row["references"] = list(ex.references)
        if scores:
            row["scores"] = {"reward": float(r)}
        rows.append(row)
    return rows


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
    examples: list[Example] | None = None,
    scores: bool = True,
) -> dict:
    """Generate for the first ``limit`` examples of ``split`` (or ``examples``) and compute the metrics."""
    examples = examples if examples is not None else split_examples(task, split, limit)
    decoding = decoding_for(policy, task, sampling)
    completions = generate_for(policy, task, examples, decoding=decoding, seed=seed, batch_size=batch_size,
                               progress=progress)
    with rewards_once(task):
        metrics = compute_metrics(task, policy, examples, completions, reference)
        samples = sample_rows(task, examples, completions, seed=seed, scores=scores)
    return {
        "policy": label,
        "task": task.name,
        "split": split,
        "n": len(examples),
        "decoding": describe_decoding(policy, decoding),
        "metrics": metrics,
        "completions": completions,
        "samples": samples,
    }


# -- many policies --------------------------------------------------------------------


def load_for_eval(spec: str, device: str, *, seed: int, base_url: str | None = None, api: dict | None = None):
    """``spec`` as a policy, with the options its backend takes from the run (an API model's
    server and seed; ``api``: more :class:`~backends.base.RunSettings` fields, e.g. concurrency)."""
    from backends import RunSettings, policy_class, resolve

    options = policy_class(spec).options_from(RunSettings(seed=seed, base_url=base_url, **(api or {})))
    return resolve(spec, device=device, **options)


def check_specs(specs: list[str], *, seed: int, base_url: str | None = None, api: dict | None = None) -> None:
    """Unknown backends, missing folders and an API model's missing key fail here, before the
    task's reward is prepared and any model loads."""
    from backends import RunSettings, policy_class

    for spec in specs:
        cls = policy_class(spec)
        cls.preflight(cls.options_from(RunSettings(seed=seed, base_url=base_url, **(api or {}))))


#: task options a run records (its checkpoint's ``rlgf.toml``) that evaluating the checkpoint keeps
#: unless they are given again: the prompts, the reward and the length it was trained with
RUN_TASK_OPTIONS = ("data", "reward_model", "reward", "reward_label", "reward_url", "prompt_field",
                    "reference_field", "chat_template", "bertscore_model", "max_new_tokens", "prompt_max_tokens")


def run_task(specs: list[str]) -> tuple[str, dict, str] | None:
    """``(task, its options, checkpoint)`` that the checkpoints among ``specs`` were trained on, or
    None without a checkpoint. Checkpoints trained on different tasks or options are refused: one
    evaluation scores every policy on the same prompts, with the same reward and length."""
    found = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir() and (name := read_state(path).get("task")):
            found.append((name, _recorded_options(path), spec))
    for name, options, spec in found[1:]:
        first_name, first_options, first = found[0]
        options, first_options = _comparable(options), _comparable(first_options)
        if (name, options) != (first_name, first_options):
            differ = sorted(k for k in {*options, *first_options} if options.get(k) != first_options.get(k))
            what = "task" if name != first_name else ", ".join(k.replace("_", "-") for k in differ)
            raise RlgfError(f"{first} and {spec} were trained with a different {what}",
                            "pass --task and its options to evaluate them on the same prompts")
    return found[0] if found else None


def _comparable(options: dict) -> dict:
    """``options`` with the files and folders they name written one way (``/x/reward/`` as
    ``/x/reward``), so runs recorded before rlgf normalised paths still match."""
    from rlgf_cli.training.config import PATH_FIELDS, local_path

    return {k: local_path(k, v) if isinstance(v, str) and k in (*PATH_FIELDS, "bertscore_model") else v
            for k, v in options.items()}


def _recorded_options(folder: Path) -> dict:
    import tomllib

    toml = folder / "rlgf.toml"
    if not toml.is_file():
        return {}
    try:  # not load_toml: a key of another rlgf version is no reason to refuse
        saved = tomllib.loads(toml.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise RlgfError(f"checkpoint {folder} is damaged: {toml.name} is not readable TOML ({exc})",
                        "pass --task and its options to evaluate it anyway") from None
    table = saved.get("train", saved)  # rlgf writes a [train] table
    return {k: table[k] for k in RUN_TASK_OPTIONS if isinstance(table, dict) and table.get(k) is not None}


def build_eval_task(task_name: str | None, specs: list[str], task_options: dict, precision=None,
                    say: Say | None = None) -> Task:
    """The task to evaluate on: ``task_name`` with ``task_options``; without a name (or with the one
    the checkpoints were trained on), their task with their run's options for those not given (see
    :data:`RUN_TASK_OPTIONS`); else the embedded default."""
    from tasks import get_task

    try:
        found = run_task(specs)
    except RlgfError:
        if task_name is None:
            raise
        found = None  # the user named the task: checkpoints that disagree take what is given
    if found and task_name in (None, found[0]):
        task_name, recorded, source = found
        kept = {k: v for k, v in recorded.items() if k not in task_options}
        if kept and say is not None:
            shown = ", ".join(f"{k.replace('_', '-')} {v}" for k, v in kept.items())
            say(f"task {task_name} as {source} was trained: {shown}")
        task_options = {**kept, **task_options}
    task = get_task(task_name or "rotten-tomatoes", **task_options)
    if precision is not None:  # before prepare: a reward classifier trained now uses it too
        task.use_precision(precision)
    # a reward classifier trained now takes a minute: say so (as `rlgf train` does)
    task.prepare(progress=None if say is None else (lambda text, frac=None: say(text)))
    return task


def run_eval(
    specs: list[str],
    *,
    task_name: str | None,
    split: str,
    limit: int | None,
    seed: int = 0,
    seeds: int = 1,
    reference_spec: str | None,
    task_options: dict,
    device: str,
    batch_size: int,
    decoding: dict | None = None,
    base_url: str | None = None,
    api: dict | None = None,
    sample_scores: bool = False,
    say: Say | None = None,
    bar: Bar | None = None,
    precision: str = "auto",
    baseline: str | None = None,
) -> dict:
    """Evaluate each policy in turn on the same prompts, ``seeds`` times (seeds ``seed``, ``seed+1``…).

    Under ``precision`` bf16 (see :mod:`backends.precision`) every local model — the policies,
    the reference and the task's reward classifier — holds bf16 matrices (float32 embeddings and
    norms) and runs under autocast.

    ``decoding`` holds :func:`resolve_sampling` options (``mode``, ``temperature``, ``top_k``,
    ``top_p``, ``num_beams``). One reference model is shared. Returns ``{"results": [...],
    "task_info": {...}}``; each result has the mean ``metrics``, ``metrics_std`` (empty for one
    run), ``per_seed`` and every generation in ``samples`` (with its reward when
    ``sample_scores``, or when there are several policies); with several policies, each but the
    ``baseline`` (default: the first) has ``paired``: its per-prompt reward against the
    baseline's (:mod:`.paired`).
    """
    from backends import policy_class, resolve

    say = say or _silent
    bar = bar or _no_bar
    check_specs(specs, seed=seed, base_url=base_url, api=api)
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    task = build_eval_task(task_name, specs, task_options, prec, say)
    say(prec.describe())
    sampling = resolve_sampling(task.eval_sampling, **(decoding or {}))
    examples = split_examples(task, split, limit)
    ref_spec, reference, ref_facts = load_reference(reference_spec, specs, task, dev, say)
    if reference is not None:
        freeze_in(reference, prec)
    seed_list = [seed + i for i in range(seeds)]
    api = {"guide_system": task.guide_system, "guide_instruction": task.guide_instruction, **(api or {})}
    remember_scores(reference)
    results = []
    for spec in specs:
        remote = policy_class(spec).remote  # loaded per seed (its requests are seeded), closed after
        shared = reference is not None and spec == ref_spec
        local = None if remote else (reference if shared else resolve(spec, device=dev))
        remember_scores(local)
        runs, rows, decoding_text = [], [], ""
        for s in seed_list:
            if runs and sampling.is_deterministic:  # beam search falls back to greedy: deterministic too
                say(f"{spec}: {decoding_text} is deterministic; one run stands for every seed")
                break
            policy = local or load_for_eval(spec, dev, seed=s, base_url=base_url, api=api)
            freeze_in(policy, prec)
            decode = decoding_for(policy, task, sampling)
            decoding_text = describe_decoding(policy, decode)
            say(f"evaluating {spec} on {task.name} {split} (n={len(examples)}, seed {s}, {decoding_text})")
            with bar(f"eval {spec} · seed {s}") as progress, prec.autocast():
                completions = generate_for(policy, task, examples, decoding=decode, seed=s, batch_size=batch_size,
                                           progress=progress)
            with prec.autocast(), rewards_once(task):
                metrics = compute_metrics(task, policy, examples, completions, reference)
                rows.extend(sample_rows(task, examples, completions, seed=s, scores=sample_scores or len(specs) > 1))
            runs.append({"seed": s, "metrics": metrics})
            if local is None:
                policy.close()
        results.append(summarise(spec, task, split, len(examples), decoding_text, runs, rows))
        del local  # free memory before the next policy
    add_paired(results, baseline)  # each policy against the baseline, prompt by prompt
    return {"results": results, "metric_names": metric_names(task),
            "task_info": {**ref_facts, **task.info(), **prec.info()}}


def remember_scores(model) -> None:
    """Make a frozen local model's ``sequence_nll`` remember what it scored: the perplexity of
    the references under a policy is the same at every seed, and is computed once."""
    inner = getattr(model, "sequence_nll", None)
    if not callable(inner) or "sequence_nll" in vars(model):
        return
    memo: dict[tuple, list] = {}

    def sequence_nll(contexts, texts, batch_size=None):
        key = (tuple(contexts), tuple(texts))
        if key not in memo:
            memo[key] = list(inner(contexts, texts) if batch_size is None else inner(contexts, texts, batch_size))
        return list(memo[key])

    model.sequence_nll = sequence_nll


def summarise(spec: str, task: Task, split: str, n: int, decoding: str, runs: list[dict], rows: list[dict]) -> dict:
    means, stds = runs_mean_std(runs)
    return {
        "policy": spec,
        "task": task.name,
        "split": split,
        "n": n,
        "decoding": decoding,
        "seeds": [r["seed"] for r in runs],
        "metrics": means,
        "metrics_std": stds,
        "per_seed": runs,
        "samples": rows,
    }

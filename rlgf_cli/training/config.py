"""Training configuration: one dataclass documenting every field, TOML in and out.

Precedence: built-in defaults < ``--config FILE.toml`` < command-line flags. The resolved
config is written to ``OUT/config.toml`` so every run says exactly how it was made.
Defaults follow the paper's IMDB hyperparameters (Tables 5 and 6).
"""

from __future__ import annotations

import tomllib
from dataclasses import Field, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from backends.errors import RlgfError
from rlgf_cli.files import RUN_HEADER
from rlgf_cli.training import trackers
from rlgf_cli.training.config_checks import (check_types, in_range, non_negative, non_negative_int, positive_int,
                                             range_error)

#: episodes per minibatch when --minibatch-size is not given (fewer when --episodes is smaller)
DEFAULT_MINIBATCH = 16
#: longest continuation any command generates (the paper's tasks use 48 and 20)
MAX_NEW_TOKENS = 4096
ADVANTAGE_ESTIMATORS = ("one-step", "gae")
LR_SCHEDULES = ("constant", "linear")
#: keys of older rlgf versions that a config file may still carry; ignored
REMOVED_KEYS = {"kl_horizon"}


#: rich help panels of ``rlgf train`` (``None``: the default "Options" panel)
PANEL_GUIDED = "Guided algorithms (paper Table 6 defaults)"
PANEL_RUN = "Run"
PANEL_PPO = "PPO hyperparameters (paper Table 5 defaults)"


def opt(default: Any, help: str, *, panel: str | None = None, default_text: str | None = None) -> Any:
    """Declare a :class:`TrainConfig` field once: its default, and the help its CLI option is generated from.

    ``default_text`` is what the help shows as the default where the real one depends on
    something else (the task, the algorithm); otherwise the default itself is shown.
    """
    return field(default=default, metadata={"help": help, "panel": panel, "default_text": default_text})


def _algorithm_list() -> str:
    from rlgf_cli.training import algorithms

    names = [f"{n} ({', '.join(algorithms.get(n).aliases)})" if algorithms.get(n).aliases else n
             for n in algorithms.names()]
    return ", ".join(names)


@dataclass
class TrainConfig:
    """Every knob of ``rlgf train``. Field names are the TOML keys and (with dashes) the flags;
    each field's metadata (see :func:`opt`) generates its ``rlgf train`` option."""

    task: str = opt("rotten-tomatoes", "Task name (see `rlgf tasks`).")
    alg: str = opt("ppo", f"Algorithm: {_algorithm_list()}.")
    learner: str | None = opt(None, "Learner policy spec: hf:NAME_OR_PATH, a folder, or smollm2.", default_text="the task's")
    guide: str | None = opt(None, "Guide policy spec for ppo++, aggrevated, lols and d2lols: a model spec or a checkpoint "
                                  "folder (e.g. a BC run's OUT/final).", default_text="none")
    guide_base_url: str | None = opt(None, "OpenAI-compatible server for an openai: guide (vLLM, llama.cpp, `rlgf serve`…).",
                                     panel=PANEL_GUIDED, default_text="$OPENAI_BASE_URL")
    guide_system: str | None = opt(None, "openai-chat: guide: its system message.", panel=PANEL_GUIDED,
                                   default_text="the task's, else: continue the text, never repeat it")
    guide_instruction: str | None = opt(None, "openai-chat: guide: the user message of a roll-in, with a {prompt} "
                                              "placeholder.", panel=PANEL_GUIDED,
                                        default_text="the task's, else 'Continue this text…{prompt}'")
    guide_prefill: str | None = opt(None, "openai-chat: guide: how it continues the learner's partial reply: auto "
                                          "(probe once), continue (vLLM, SGLang), prefix (DeepSeek, Mistral), trailing "
                                          "(llama.cpp), instruct (approximate), none.", panel=PANEL_GUIDED,
                                    default_text="auto")
    guide_concurrency: int = opt(0, "API guide: requests in flight at once (0: the backend's 8).", panel=PANEL_GUIDED)
    guide_prompts_per_request: int = opt(1, "openai: guide: prompts per completions request (chat guides send one).",
                                         panel=PANEL_GUIDED)
    guide_extensions: str | None = opt(None, "API guide: send top_k and min_tokens (vLLM, llama.cpp, SGLang, `rlgf serve` "
                                             "take them; OpenAI refuses them): auto (ask the server once), on, off.",
                                       panel=PANEL_GUIDED, default_text="auto")
    guide_temperature: float | None = opt(None, "The guide's own sampling temperature in its roll-ins and roll-outs, "
                                                "in (0, 2].", panel=PANEL_GUIDED, default_text="--temperature's")
    guide_top_k: int | None = opt(None, "The guide's own top-k (0: off).", panel=PANEL_GUIDED, default_text="--top-k's")
    guide_top_p: float | None = opt(None, "The guide's own nucleus top-p, in (0, 1] (e.g. 0.92, as the authors' code "
                                          "samples its guide).", panel=PANEL_GUIDED, default_text="--top-p's")
    guide_budget_tokens: int = opt(0, "Stop cleanly (with a checkpoint) before the API guide spends more than N "
                                      "prompt+completion tokens (0: no cap).", panel=PANEL_GUIDED)
    guide_price_per_1k: float | None = opt(None, "USD per 1,000 guide tokens, for the cost report.", panel=PANEL_GUIDED,
                                           default_text="known list prices")
    init: str | None = opt(None, "Warm-start the learner from this spec or checkpoint folder (the paper's BC+Alg rows).",
                           default_text="none")
    data: str | None = opt(None, "Task data file or folder.", default_text="the task's own source")
    reward_model: str | None = opt(None, "Reward model folder: the sentiment tasks' classifier, or for --task prompts "
                                         "any sequence-classification model (see --reward-label).", default_text="the task's")
    reward_label: str | None = opt(None, "--task prompts with --reward-model: the class (name or index) whose probability "
                                         "is the reward; a one-output head gives its raw score.",
                                   default_text="a 'positive' class")
    reward_url: str | None = opt(None, "--task prompts: a reward service; rlgf POSTs {prompts, completions, references} "
                                       "and reads {rewards}. Bearer key from $RLGF_REWARD_API_KEY.", default_text="none")
    prompt_field: str | None = opt(None, "--task prompts: the column holding the prompt text.", default_text="prompt")
    reference_field: str | None = opt(None, "--task prompts: the column holding the reference text(s).",
                                      default_text="references or reference, if present")
    chat_template: str | None = opt(None, "--task prompts: render prompts with the model's chat template: auto (chat "
                                          "'messages' rows, when the tokenizer has a template), on (every row), off.",
                                    default_text="auto")
    reward: str | None = opt(None, "Reward: a task's named reward (e.g. cider_d, spider) or module:function.",
                             default_text="the task's")
    bertscore_model: str | None = opt(None, "BERTScore model (a name or local folder) for tasks that report bertscore_f1 "
                                            "(CommonGen).", default_text="the task's")
    iterations: int = opt(10, "Training iterations (one rollout batch and one update each).", panel=PANEL_RUN,
                          default_text="10; imdb 100")
    episodes: int = opt(64, "Episodes (prompts) per iteration.", panel=PANEL_RUN,
                        default_text="64; rotten-tomatoes (the default task) and prompts: 32, but not for BC; imdb 27")
    epochs: int = opt(5, "PPO epochs over each rollout batch.", panel=PANEL_PPO,
                      default_text="5; rotten-tomatoes (the default task) and prompts: 2, but not for BC; commongen 1")
    minibatch_size: int = opt(0, "Episodes per minibatch in the update; 0: 16, or --episodes when fewer (the resolved "
                                 "number is what OUT/config.toml records).", panel=PANEL_PPO,
                              default_text="16, at most --episodes; imdb 1")
    rollout_batch_size: int = opt(0, "Episodes per generation and scoring chunk (a memory bound); 0 sizes it to the "
                                     "device (what fits in a GPU's free memory; 64 on CPU).", panel=PANEL_RUN)
    cuda_graphs: bool = opt(False, "Experimental: replay each decoding step of a causal model as a CUDA graph (GPU only; "
                                   "falls back with a warning where capture fails).", panel=PANEL_RUN)
    compile: bool | None = opt(None, "Compile the learner's and critic's transformer layers (torch.compile) for "
                                      "scoring and the update; decoding stays eager. Needs a C++ compiler on a CPU; "
                                      "the first iteration spends ~20 s compiling (seconds once cached), then a "
                                      "bf16 CPU iteration runs ~1.2x faster. Unset: on for PPO-family runs of 20+ "
                                      "iterations under CPU bf16 (OUT/config.toml records the choice).", panel=PANEL_RUN,
                               default_text="auto: on under CPU bf16 from 20 iterations")
    lr: float | None = opt(None, "Learning rate (AdamW).", panel=PANEL_PPO,
                           default_text="1e-6; BC 1e-5; rotten-tomatoes (the default task) and prompts: 5e-05, but not for "
                                        "BC; commongen 1e-5")
    weight_decay: float = opt(0.0, "AdamW weight decay.", panel=PANEL_PPO)
    gamma: float = opt(0.99, "Discount γ.", panel=PANEL_PPO)
    lam: float = opt(0.95, "GAE λ.", panel=PANEL_PPO)
    clip_range: float = opt(0.2, "Policy ratio clip ε.", panel=PANEL_PPO, default_text="0.2; commongen 0.4")
    clip_range_value: float = opt(0.2, "Value clip range.", panel=PANEL_PPO)
    vf_coef: float = opt(0.5, "Value-loss coefficient.", panel=PANEL_PPO, default_text="0.5; commongen 3.0")
    ent_coef: float = opt(0.0, "Entropy bonus coefficient.", panel=PANEL_PPO)
    kl_coef: float = opt(0.1, "Initial KL-penalty coefficient.", panel=PANEL_PPO, default_text="0.1; commongen 0")
    target_kl: float = opt(0.1, "Target KL per learner token of the adaptive controller, which moves the coefficient "
                                "by coef·(1 + 0.1·clip(KL/target − 1, ±0.2)) each iteration (RL4LMs' rule) from the "
                                "exact per-token KL(π‖π_ref); 0: a fixed coefficient.", panel=PANEL_PPO,
                          default_text="0.1; commongen 0")
    lr_schedule: str = opt("constant", "Learning-rate schedule: constant, or linear (lr·(1 − t/T) in iteration t).",
                           panel=PANEL_PPO, default_text="constant; commongen linear")
    max_grad_norm: float = opt(1.0, "Gradient clipping (global norm).", panel=PANEL_PPO)
    whiten_advantages: bool = opt(True, "Whiten advantages over each rollout batch.", panel=PANEL_PPO)
    max_new_tokens: int | None = opt(None, "Continuation length.", panel=PANEL_RUN, default_text="the task's")
    min_new_tokens: int | None = opt(None, "--task prompts: the shortest continuation (EOS is blocked before it).",
                                     panel=PANEL_RUN, default_text="1")
    prompt_max_tokens: int | None = opt(None, "The longest prompt in tokens; a longer one loses its start (with a "
                                              "warning).", panel=PANEL_RUN, default_text="the task's: 64; prompts 256")
    temperature: float | None = opt(None, "Sampling temperature of the training roll-outs, in (0, 2] (`rlgf eval` "
                                          "samples with its own --temperature).", panel=PANEL_RUN,
                                    default_text="the task's: 1.0")
    top_k: int | None = opt(None, "Top-k of that sampling (0: off).", panel=PANEL_RUN,
                            default_text="the task's: 50; commongen 0")
    top_p: float | None = opt(None, "Nucleus top-p of that sampling, in (0, 1] (1: off).", panel=PANEL_RUN,
                              default_text="the task's: 1.0")
    beta: float | None = opt(None, "Mixing probability β of ppo++ (the guide rolls in) or aggrevated (the learner rolls "
                                   "in); lols and d2lols take --ppopp-beta and --aggrevated-beta.", panel=PANEL_GUIDED,
                             default_text="PPO++ 0.2, AggreVaTeD 0.8")
    ppopp_beta: float | None = opt(None, "β of the PPO++ phase (lols, d2lols): probability the guide rolls in.",
                                   panel=PANEL_GUIDED, default_text="0.2")
    aggrevated_beta: float | None = opt(None, "β of the AggreVaTeD phase (lols, d2lols): probability the learner rolls "
                                        "in.", panel=PANEL_GUIDED, default_text="0.8")
    alpha: float | None = opt(None, "LOLS loss mix α (α·L(A_learner) + (1−α)·L(A_guide)) / D2LOLS mixing time α "
                                    "(AggreVaTeD for the first ⌈α·T⌉ iterations, then PPO++).", panel=PANEL_GUIDED,
                              default_text="LOLS 0.8, D2LOLS 0.2")
    switch_iteration: int | None = opt(None, "D2LOLS switch iteration; fixed from α and --iterations when a run starts "
                                             "(so --resume --iterations N does not move it).", panel=PANEL_GUIDED,
                                       default_text="⌈α·T⌉")
    aggrevated_advantage: str = opt("one-step", "AggreVaTeD's advantage on the learner's roll-in: one-step (the paper's "
                                                "A^πg: r + γV_g(s') − V_g(s) before the restart, the λ-return through the "
                                                "guide's roll-out at the deviation token) or gae (one GAE pass over the "
                                                "whole response, as the authors' code).", panel=PANEL_GUIDED)
    seed: int = opt(0, "Random seed (one place seeds python, numpy and torch); the same seed gives the same run on CPU.",
                    panel=PANEL_RUN)
    device: str = opt("auto", "auto, cpu, cuda or cuda:N.", panel=PANEL_RUN)
    precision: str = opt("auto", "auto, fp32 or bf16. auto: bf16 autocast on a GPU that supports it or a CPU with "
                                 "AMX-BF16 / AVX512-BF16 units, fp32 elsewhere. The trained models' weights and "
                                 "optimizer state stay float32; frozen models hold bf16 matrices (float32 "
                                 "embeddings and norms).", panel=PANEL_RUN)
    out: str | None = opt(None, "Run folder.", panel=PANEL_RUN, default_text="runs/TASK-ALG-seedN")
    save_every: int = opt(1, "Checkpoint every N iterations (0: only the final one); with 1 a killed run loses at most "
                             "one iteration on --resume.", panel=PANEL_RUN)
    keep_checkpoints: int = opt(1, "How many periodic checkpoints to keep; the last iteration's, which --resume continues "
                                "from, is kept besides them.", panel=PANEL_RUN)
    log_to: str = opt("none", "Also log each iteration's metrics to: tensorboard (event files in OUT/tensorboard/; "
                              "needs the tensorboard package; watch with tensorboard --logdir runs), or none.",
                      panel=PANEL_RUN)

    # -- derived -----------------------------------------------------------------
    @property
    def algorithm(self):
        from rlgf_cli.training import algorithms

        return algorithms.get(self.alg)

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else self.algorithm.default_lr

    def betas(self) -> dict[str, float]:
        """β per scheme name: the phase options, or ``--beta`` for a one-phase algorithm."""
        from rlgf_cli.training.algorithms import AGGREVATED, PPO_PP

        out = {PPO_PP.name: PPO_PP.default_beta if self.ppopp_beta is None else self.ppopp_beta,
               AGGREVATED.name: AGGREVATED.default_beta if self.aggrevated_beta is None else self.aggrevated_beta}
        if self.beta is not None:
            for name in self.algorithm.beta_schemes:
                out[name] = self.beta
        return out

    def out_dir(self) -> Path:
        return Path(self.out) if self.out else Path("runs") / f"{self.task}-{self.alg}-seed{self.seed}"

    # -- validation ----------------------------------------------------------------
    def validate(self) -> "TrainConfig":
        """Normalise aliases and check ranges; raises :class:`RlgfError` on the first problem."""
        self.alg = normalise_alg(self.alg)
        algorithm = self.algorithm
        if algorithm.needs_guide and not self.guide:
            raise RlgfError(
                f"--alg {self.alg} needs a guide policy",
                "pass --guide SPEC (a model spec or a checkpoint folder, e.g. a BC run's OUT/final)",
            )
        positive_int(self, "iterations", "episodes", "epochs", "guide_prompts_per_request")
        non_negative(self, "weight_decay", "vf_coef", "ent_coef", "kl_coef", "target_kl", "max_grad_norm")
        non_negative_int(self, "save_every", "seed", "guide_budget_tokens", "rollout_batch_size", "minibatch_size",
                          "guide_concurrency")
        if self.minibatch_size == 0:  # not given: follows the episodes per iteration
            self.minibatch_size = min(DEFAULT_MINIBATCH, self.episodes)
        if self.guide_price_per_1k is not None and not (self.guide_price_per_1k >= 0):
            raise range_error("guide_price_per_1k", self.guide_price_per_1k, ">= 0")
        in_range(self, "gamma", 0.0, 1.0)
        in_range(self, "lam", 0.0, 1.0)
        if self.alpha is not None:
            in_range(self, "alpha", 0.0, 1.0)
        for name in ("beta", "ppopp_beta", "aggrevated_beta"):
            if getattr(self, name) is not None:
                in_range(self, name, 0.0, 1.0)
        self._check_phases(algorithm)
        if self.aggrevated_advantage not in ADVANTAGE_ESTIMATORS:
            raise RlgfError(f"unknown --aggrevated-advantage '{self.aggrevated_advantage}'",
                            f"choose one of: {', '.join(ADVANTAGE_ESTIMATORS)}")
        trackers.parse(self.log_to)
        if str(self.precision).lower() not in ("auto", "fp32", "bf16", "float32", "bfloat16"):
            raise RlgfError(f"unknown --precision '{self.precision}'", "choose one of: auto, fp32, bf16")
        self._check_choices()
        if self.lr_schedule not in LR_SCHEDULES:
            raise RlgfError(f"unknown --lr-schedule '{self.lr_schedule}'", f"choose one of: {', '.join(LR_SCHEDULES)}")
        in_range(self, "clip_range", 0.0, 1.0, low_open=True)
        if not self.clip_range_value > 0:  # also NaN
            raise range_error("clip_range_value", self.clip_range_value, "> 0")
        if not self.max_grad_norm > 0:  # 0 would zero every gradient, not turn clipping off
            raise range_error("max_grad_norm", self.max_grad_norm, "> 0")
        if self.lr is not None and not (0.0 < self.lr < 1.0):
            raise range_error("lr", self.lr, "in (0, 1)")
        if self.max_new_tokens is not None and not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS:
            raise range_error("max_new_tokens", self.max_new_tokens, f"in [1, {MAX_NEW_TOKENS}]")
        if self.keep_checkpoints < 1:
            raise range_error("keep_checkpoints", self.keep_checkpoints, ">= 1")
        if self.minibatch_size > self.episodes:
            raise RlgfError(
                f"--minibatch-size {self.minibatch_size} is larger than --episodes {self.episodes}",
                "use a minibatch size of at most the episodes per iteration",
            )
        if self.device not in ("auto", "cpu", "mps") and not self.device.startswith("cuda"):
            raise RlgfError(f"unknown device '{self.device}'", "use auto, cpu, cuda or cuda:N")
        if algorithm.switches and self.switch_iteration is None:
            from rlgf_cli.training.algorithms import switch_iteration

            alpha = algorithm.default_alpha if self.alpha is None else self.alpha
            self.switch_iteration = switch_iteration(alpha, self.iterations)
        if self.switch_iteration is not None and self.switch_iteration < 0:
            raise range_error("switch_iteration", self.switch_iteration, ">= 0")
        return self

    def _check_choices(self) -> None:
        """The sampling ranges and the word-valued options, with the checks their users apply
        later, so ``--print-config`` never shows a configuration ``rlgf train`` would refuse."""
        from backends.openai_api.chat import check_prefill
        from backends.openai_api.policy import extensions_setting
        from tasks.base import check_sampling
        from tasks.chat import check_mode

        for what, t, k, p in (("sampling", self.temperature, self.top_k, self.top_p),
                              ("--guide-* sampling", self.guide_temperature, self.guide_top_k, self.guide_top_p)):
            if (t, k, p) != (None, None, None):
                check_sampling(1.0 if t is None else t, 0 if k is None else k, 1.0 if p is None else p, what=what)
        if self.min_new_tokens is not None and self.min_new_tokens < 0:
            raise range_error("min_new_tokens", self.min_new_tokens, ">= 0")
        if self.prompt_max_tokens is not None and self.prompt_max_tokens < 1:
            raise range_error("prompt_max_tokens", self.prompt_max_tokens, ">= 1")
        if self.chat_template is not None:
            check_mode(self.chat_template)
        if self.guide_prefill is not None:
            check_prefill(self.guide_prefill)
        if self.guide_extensions is not None:
            extensions_setting(self.guide_extensions)

    def _check_phases(self, algorithm) -> None:
        if self.beta is not None and len(algorithm.beta_schemes) > 1:
            raise RlgfError(
                f"--beta is ambiguous for --alg {self.alg}: its PPO++ and AggreVaTeD phases have opposite β "
                "(PPO++: probability the guide rolls in; AggreVaTeD: probability the learner rolls in)",
                "pass --ppopp-beta (paper 0.2) and/or --aggrevated-beta (paper 0.8) instead")

    # -- TOML ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_toml(self) -> str:
        lines = [f"{RUN_HEADER}train — resolved configuration", "[train]"]
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None and f.name == "lr":  # the algorithm's: say which, not the list of defaults
                lines.append(f"lr = {_toml_value(self.learning_rate)}  # {self.algorithm.name}'s default")
            elif value is None:
                lines.append(f"# {f.name} = (default: {shown_default(f)})")
            else:
                lines.append(f"{f.name} = {_toml_value(value)}")
        return "\n".join(lines) + "\n"


def normalise_alg(name: str) -> str:
    """The canonical name of an algorithm or alias (an unknown one is an :class:`RlgfError`)."""
    from rlgf_cli.training import algorithms

    return algorithms.get(name).name


def shown_default(f: Field) -> str:
    """A field's default as help and ``config.toml`` show it: its ``default_text``, else the value."""
    text = f.metadata.get("default_text")
    if text is not None:
        return text
    if isinstance(f.default, bool):
        return "on" if f.default else "off"
    return "none" if f.default is None else str(f.default)


def field_names() -> list[str]:
    return [f.name for f in fields(TrainConfig)]


def load_toml(path: str | Path, option: str = "--config") -> dict[str, Any]:
    """Read a config file: top-level keys or a ``[train]`` table with :class:`TrainConfig` fields.
    ``option``: the command-line option that named the file (its hints say it)."""
    p = Path(path)
    if not p.is_file():
        raise RlgfError(f"config file not found: {p}", f"pass an existing TOML file to {option}")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise RlgfError(f"config file {p} is not valid TOML: {exc}", f"fix the file or drop {option}") from None
    if isinstance(data.get("train"), dict):
        data = {**{k: v for k, v in data.items() if k != "train"}, **data["train"]}
    for key in REMOVED_KEYS & set(data):
        data.pop(key)
    known = set(field_names())
    unknown = sorted(set(data) - known)
    if unknown:
        from backends.errors import did_you_mean

        hint = did_you_mean(unknown[0], sorted(known), n=1).rstrip() or f"known keys: {', '.join(sorted(known))}"
        raise RlgfError(f"unknown key '{unknown[0]}' in {p}", hint)
    return data


def build_config(config_file: str | None = None, *, config_option: str = "--config", **overrides: Any) -> TrainConfig:
    """Defaults < file < overrides (``None`` overrides are ignored), validated; ``config_option``
    names the option that gave the file, in its errors."""
    given: dict[str, Any] = {}
    if config_file:
        given.update(load_toml(config_file, config_option))
    flags = {k: v for k, v in overrides.items() if v is not None}
    given.update(flags)
    if "episodes" in flags and "minibatch_size" not in flags and isinstance(given.get("minibatch_size"), int) \
            and isinstance(flags["episodes"], int) and given["minibatch_size"] > flags["episodes"] > 0:
        # a file's minibatch size (config.toml records the resolved default, 16) follows fewer --episodes
        import warnings

        from backends.errors import RlgfWarning

        warnings.warn(f"the minibatch size {given['minibatch_size']} of {config_file} is more than --episodes "
                      f"{flags['episodes']}: minibatches of {flags['episodes']}", RlgfWarning, stacklevel=2)
        given["minibatch_size"] = flags["episodes"]
    for name in PATH_FIELDS:
        if isinstance(given.get(name), str):
            given[name] = local_path(name, given[name])
    values = dict(task_defaults(given.get("task", TrainConfig.task), given.get("alg", TrainConfig.alg)))
    values.update(given)
    try:
        cfg = TrainConfig(**values)
    except TypeError as exc:  # pragma: no cover - guarded by load_toml's key check
        raise RlgfError(f"bad configuration: {exc}", "check the keys of your config file") from None
    check_types(cfg)
    return cfg.validate()


#: fields that may name local files or folders: kept absolute, so ``--resume`` works from any folder
PATH_FIELDS = ("learner", "init", "guide", "data", "reward", "reward_model")


def local_path(name: str, value: str) -> str:
    """``value`` of the field ``name`` with a relative path to something that exists made
    absolute and an absolute one normalised (``/x/reward/`` → ``/x/reward``); anything else (a
    hub name, ``smollm2``, ``openai:…``, a module) as it was. A bare word counts as a path only
    for ``data`` (a file name), so a folder that happens to be called ``smollm2`` does not turn
    the embedded model into a path."""
    prefix, rest = ("hf:", value[3:]) if value.startswith("hf:") else ("", value)
    if name == "reward":  # FILE.py:FUNCTION, or module:function
        file, sep, func = rest.rpartition(":")
        if sep and file.endswith(".py") and Path(file).expanduser().is_file():
            return f"{Path(file).expanduser().resolve()}:{func}"
        return value
    if name == "data" and prefix:  # hf:NAME[:SPLIT], NAME a hub dataset or a local folder (read as tasks.hub_rows does)
        local, sep, split = (rest, "", "") if Path(rest).expanduser().exists() else rest.partition(":")
        path = Path(local.strip()).expanduser()
        return prefix + str(path.resolve()) + sep + split if local.strip() and path.exists() else value
    looks_like_path = name == "data" or "/" in rest or rest.startswith(("~", "."))
    path = Path(rest).expanduser()
    if looks_like_path and not path.is_absolute() and path.exists():
        return prefix + str(path.resolve())
    if looks_like_path and path.is_absolute():  # /x/reward/ and /x/reward are one folder (".." and symlinks kept)
        return prefix + str(path)
    return value


def task_defaults(task: Any, alg: Any) -> dict[str, Any]:
    """The task's own training defaults for RL algorithms (the paper's Tables 5 and 6 for
    ``imdb`` and ``commongen``), read without loading the task; flags and files override them."""
    if not isinstance(task, str) or not isinstance(alg, str):
        return {}
    from tasks.registry import train_defaults

    from rlgf_cli.training import algorithms

    try:
        trainer = algorithms.get(alg).trainer
    except RlgfError:
        return {}  # validate() reports the unknown algorithm
    return train_defaults(task) if trainer == "ppo" else {}


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'

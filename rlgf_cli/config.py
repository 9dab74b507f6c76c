"""Training configuration: one dataclass documenting every field, TOML in and out.

Precedence: built-in defaults < ``--config FILE.toml`` < command-line flags. The resolved
config is written to ``OUT/config.toml`` so every run says exactly how it was made.
Defaults follow the paper's IMDB hyperparameters (Tables 5 and 6).
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from backends.errors import RlgfError

#: algorithm names and their accepted aliases
ALGORITHMS = ("ppo", "ppo++", "aggrevated", "lols", "d2lols", "bc")
ALG_ALIASES = {"ppopp": "ppo++", "ppo_pp": "ppo++", "pp": "ppo++", "aggrevate": "aggrevated"}

#: paper defaults that depend on the algorithm (Tables 5 and 6); β defaults live with the
#: schemes in rlgf_cli.algorithms (PPO++ 0.2, AggreVaTeD 0.8)
DEFAULT_LR = {"bc": 1e-5}
#: episodes per minibatch when --minibatch-size is not given (fewer when --episodes is smaller)
DEFAULT_MINIBATCH = 16
#: longest continuation any command generates (the paper's tasks use 48 and 20)
MAX_NEW_TOKENS = 4096


@dataclass
class TrainConfig:
    """Every knob of ``rlgf train``. Field names are the TOML keys and (with dashes) the flags."""

    #: task name (``rlgf tasks`` lists them)
    task: str = "rotten-tomatoes"
    #: algorithm: ppo, ppo++ (ppopp), aggrevated, lols, d2lols or bc
    alg: str = "ppo"
    #: learner policy spec (``hf:NAME_OR_PATH``, a folder, ``smollm2``); default: the task's
    learner: str | None = None
    #: guide policy spec for the guided algorithms
    guide: str | None = None
    #: base URL of an OpenAI-compatible server for an ``openai:`` guide (else $OPENAI_BASE_URL)
    guide_base_url: str | None = None
    #: cap on the API guide's prompt + completion tokens for the run (0 = no cap)
    guide_budget_tokens: int = 0
    #: price per 1,000 guide tokens in USD, for the cost report (default: known list prices)
    guide_price_per_1k: float | None = None
    #: warm-start the learner from this spec or checkpoint folder (the paper's BC+Alg rows)
    init: str | None = None
    #: task data file or folder (default: the task's own source)
    data: str | None = None
    #: reward classifier folder (sentiment tasks; default: the task's own)
    reward_model: str | None = None
    #: reward to train on: a task's named reward (e.g. cider_d, spider) or module:function
    reward: str | None = None
    #: BERTScore model (a name or local folder) for tasks that report bertscore_f1
    bertscore_model: str | None = None
    #: number of training iterations (one rollout batch + one update each)
    iterations: int = 10
    #: episodes (prompts) per iteration
    episodes: int = 64
    #: PPO epochs over each rollout batch
    epochs: int = 5
    #: episodes per minibatch in the update; 0 (the default) = 16, or --episodes when fewer
    #: (the resolved number is what OUT/config.toml records)
    minibatch_size: int = 0
    #: episodes per generation / scoring chunk (memory bound); 0 = sized to the device
    #: (what fits in a GPU's free memory, 64 on CPU)
    rollout_batch_size: int = 0
    #: capture each decoding step of a causal model in a CUDA graph (experimental; GPU only)
    cuda_graphs: bool = False
    #: learning rate (AdamW); default 1e-6 for RL (paper), 1e-5 for BC
    lr: float | None = None
    weight_decay: float = 0.0
    #: discount and GAE lambda
    gamma: float = 0.99
    lam: float = 0.95
    #: PPO clip range for the policy ratio and for the value
    clip_range: float = 0.2
    clip_range_value: float = 0.2
    #: value-loss coefficient and entropy bonus
    vf_coef: float = 0.5
    ent_coef: float = 0.0
    #: initial KL coefficient; target KL for the adaptive controller (0 = fixed coefficient)
    kl_coef: float = 0.1
    target_kl: float = 0.1
    kl_horizon: int = 10000
    #: gradient clipping (global norm)
    max_grad_norm: float = 1.0
    #: whiten advantages over each rollout batch
    whiten_advantages: bool = True
    #: continuation length (default: the task's)
    max_new_tokens: int | None = None
    #: mixing probability β (default per scheme: PPO++ 0.2, AggreVaTeD 0.8)
    beta: float | None = None
    #: LOLS advantage mix / D2LOLS switch fraction α
    alpha: float = 0.8
    #: random seed (one place seeds python, numpy and torch)
    seed: int = 0
    #: cpu, cuda, cuda:N or auto
    device: str = "auto"
    #: run folder
    out: str | None = None
    #: write a checkpoint every N iterations (0 = only the final one); with 1 a killed run
    #: loses at most one iteration on --resume
    save_every: int = 1
    #: how many periodic checkpoints to keep
    keep_checkpoints: int = 1

    # -- derived -----------------------------------------------------------------
    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR.get(self.alg, 1e-6)

    def out_dir(self) -> Path:
        return Path(self.out) if self.out else Path("runs") / f"{self.task}-{self.alg}-seed{self.seed}"

    # -- validation ----------------------------------------------------------------
    def validate(self) -> "TrainConfig":
        """Normalise aliases and check ranges; raises :class:`RlgfError` on the first problem."""
        self.alg = normalise_alg(self.alg)
        if self.alg in ("ppo++", "aggrevated", "lols", "d2lols") and not self.guide:
            raise RlgfError(
                f"--alg {self.alg} needs a guide policy",
                "pass --guide SPEC (a model spec or a checkpoint folder, e.g. a BC run's OUT/final)",
            )
        _positive_int(self, "iterations", "episodes", "epochs", "kl_horizon")
        _non_negative(self, "weight_decay", "vf_coef", "ent_coef", "kl_coef", "target_kl", "max_grad_norm")
        _non_negative_int(self, "save_every", "seed", "guide_budget_tokens", "rollout_batch_size", "minibatch_size")
        if self.minibatch_size == 0:  # not given: follows the episodes per iteration
            self.minibatch_size = min(DEFAULT_MINIBATCH, self.episodes)
        if self.guide_price_per_1k is not None and not (self.guide_price_per_1k >= 0):
            raise _range_error("guide_price_per_1k", self.guide_price_per_1k, ">= 0")
        _in_range(self, "gamma", 0.0, 1.0)
        _in_range(self, "lam", 0.0, 1.0)
        _in_range(self, "alpha", 0.0, 1.0)
        if self.beta is not None:
            _in_range(self, "beta", 0.0, 1.0)
        _in_range(self, "clip_range", 0.0, 1.0, low_open=True)
        if not self.clip_range_value > 0:  # also NaN
            raise _range_error("clip_range_value", self.clip_range_value, "> 0")
        if not self.max_grad_norm > 0:  # 0 would zero every gradient, not turn clipping off
            raise _range_error("max_grad_norm", self.max_grad_norm, "> 0")
        if self.lr is not None and not (0.0 < self.lr < 1.0):
            raise _range_error("lr", self.lr, "in (0, 1)")
        if self.max_new_tokens is not None and not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS:
            raise _range_error("max_new_tokens", self.max_new_tokens, f"in [1, {MAX_NEW_TOKENS}]")
        if self.keep_checkpoints < 1:
            raise _range_error("keep_checkpoints", self.keep_checkpoints, ">= 1")
        if self.minibatch_size > self.episodes:
            raise RlgfError(
                f"--minibatch-size {self.minibatch_size} is larger than --episodes {self.episodes}",
                "use a minibatch size of at most the episodes per iteration",
            )
        if self.device not in ("auto", "cpu", "mps") and not self.device.startswith("cuda"):
            raise RlgfError(f"unknown device '{self.device}'", "use auto, cpu, cuda or cuda:N")
        return self

    # -- TOML ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_toml(self) -> str:
        lines = ["# rlgf train — resolved configuration", "[train]"]
        for key, value in self.to_dict().items():
            if value is None:
                lines.append(f"# {key} = (default)")
            else:
                lines.append(f"{key} = {_toml_value(value)}")
        return "\n".join(lines) + "\n"


def normalise_alg(name: str) -> str:
    key = name.strip().lower()
    key = ALG_ALIASES.get(key, key)
    if key not in ALGORITHMS:
        import difflib

        close = difflib.get_close_matches(key, list(ALGORITHMS) + list(ALG_ALIASES), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise RlgfError(f"unknown algorithm '{name}'", f"{hint}choose one of: {', '.join(ALGORITHMS)}")
    return key


def field_names() -> list[str]:
    return [f.name for f in fields(TrainConfig)]


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a config file: top-level keys or a ``[train]`` table with :class:`TrainConfig` fields."""
    p = Path(path)
    if not p.is_file():
        raise RlgfError(f"config file not found: {p}", "pass an existing TOML file to --config")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise RlgfError(f"config file {p} is not valid TOML: {exc}", "fix the file or drop --config") from None
    if isinstance(data.get("train"), dict):
        data = {**{k: v for k, v in data.items() if k != "train"}, **data["train"]}
    known = set(field_names())
    unknown = sorted(set(data) - known)
    if unknown:
        import difflib

        close = difflib.get_close_matches(unknown[0], sorted(known), n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(sorted(known))}"
        raise RlgfError(f"unknown key '{unknown[0]}' in {p}", hint)
    return data


def build_config(config_file: str | None = None, **overrides: Any) -> TrainConfig:
    """Defaults < file < overrides (``None`` overrides are ignored), validated."""
    values: dict[str, Any] = {}
    if config_file:
        values.update(load_toml(config_file))
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        cfg = TrainConfig(**values)
    except TypeError as exc:  # pragma: no cover - guarded by load_toml's key check
        raise RlgfError(f"bad configuration: {exc}", "check the keys of your config file") from None
    _check_types(cfg)
    return cfg.validate()


def _check_types(cfg: TrainConfig) -> None:
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if value is None:
            continue
        default = f.default
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if ok:
                setattr(cfg, f.name, float(value))
        elif isinstance(default, str) or f.name in ("learner", "guide", "init", "data", "reward_model", "out", "reward", "bertscore_model",
                                                            "guide_base_url"):
            ok = isinstance(value, str)
        else:
            ok = True
        if not ok:
            raise RlgfError(
                f"config value {f.name} = {value!r} has the wrong type",
                f"expected {type(default).__name__ if default is not None else 'a string'}",
            )
    for name in ("lr", "beta", "guide_price_per_1k"):
        value = getattr(cfg, name)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise RlgfError(f"config value {name} = {value!r} has the wrong type", "expected a number")
            setattr(cfg, name, float(value))
    if cfg.max_new_tokens is not None and (isinstance(cfg.max_new_tokens, bool) or not isinstance(cfg.max_new_tokens, int)):
        raise RlgfError(f"config value max_new_tokens = {cfg.max_new_tokens!r} has the wrong type", "expected an integer")


def _range_error(name: str, value: Any, want: str) -> RlgfError:
    flag = "--" + name.replace("_", "-")
    return RlgfError(f"{flag} must be {want} (got {value})", f"pass a value {want}")


def _positive_int(cfg: TrainConfig, *names: str) -> None:
    for n in names:
        if getattr(cfg, n) < 1:
            raise _range_error(n, getattr(cfg, n), ">= 1")


def _non_negative_int(cfg: TrainConfig, *names: str) -> None:
    for n in names:
        if getattr(cfg, n) < 0:
            raise _range_error(n, getattr(cfg, n), ">= 0")


def _non_negative(cfg: TrainConfig, *names: str) -> None:
    for n in names:
        v = getattr(cfg, n)
        if not math.isfinite(v) or v < 0:
            raise _range_error(n, v, ">= 0")


def _in_range(cfg: TrainConfig, name: str, low: float, high: float, low_open: bool = False) -> None:
    v = getattr(cfg, name)
    bad = not math.isfinite(v) or v > high or (v <= low if low_open else v < low)
    if bad:
        lo = "(" if low_open else "["
        raise _range_error(name, v, f"in {lo}{low:g}, {high:g}]")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'

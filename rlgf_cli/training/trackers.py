"""Where a run's per-iteration metrics go besides ``OUT/metrics.jsonl``: ``--log-to``.

``tensorboard`` writes TensorBoard event files to ``OUT/tensorboard/`` (watch a run with
``tensorboard --logdir runs``). Scalars are grouped by what they measure (``reward/mean``,
``kl/exact``, ``loss/pg_loss``, ``bc/loss``, ``time/update_s``, ``guide_api/...``), one step per
iteration. A resumed run drops the events its interrupted part logged after the checkpoint
it continues from, as it truncates ``metrics.jsonl``, so no iteration appears twice.
"""

from __future__ import annotations

from pathlib import Path

from backends.errors import RlgfError, did_you_mean

TRACKERS = ("tensorboard",)
#: the event files' folder inside the run folder
TENSORBOARD_DIR = "tensorboard"
#: metric-name prefix → TensorBoard group (the rest of the name follows the slash)
GROUPS = (("time_", "time"), ("guide_api_", "guide_api"), ("reward_", "reward"), ("kl_", "kl"), ("bc_", "bc"))
#: names that read badly split at their prefix
RENAMED = {"kl": "kl/sampled", "time_s": "time/iteration_s"}
LOSSES = ("loss", "pg_loss", "v_loss", "guide_v_loss", "entropy", "approx_kl", "clipfrac", "grad_norm")


def parse(value: str | None) -> list[str]:
    """``--log-to``'s trackers: a comma-separated list, ``none`` or empty for none."""
    names = [n.strip().lower() for n in str(value or "").split(",") if n.strip()]
    names = [n for n in names if n != "none"]
    for name in names:
        if name not in TRACKERS:
            raise RlgfError(f"unknown --log-to '{name}'",
                            f"{did_you_mean(name, TRACKERS)}choose one of: {', '.join(TRACKERS)}, none")
    return list(dict.fromkeys(names))


def require(value: str | None) -> None:
    """Fail before any work when a tracker's package is missing."""
    if "tensorboard" in parse(value):
        _summary_writer()


def scalar_name(key: str) -> str:
    """``time_update_s`` → ``time/update_s``, ``pg_loss`` → ``loss/pg_loss``, ``kl`` → ``kl/sampled``."""
    if key in RENAMED:
        return RENAMED[key]
    for prefix, group in GROUPS:
        if key.startswith(prefix):
            return f"{group}/{key[len(prefix):]}"
    return f"loss/{key}" if key in LOSSES else f"train/{key}"


class Trackers:
    """The run's trackers: :meth:`log` each iteration's metrics, :meth:`close` at the end."""

    def __init__(self, value: str | None, out: Path, *, done: int, config_toml: str):
        self.writers = []
        #: the TensorBoard folder, when it is written
        self.tensorboard: Path | None = None
        if "tensorboard" in parse(value):
            writer_class = _summary_writer()
            self.tensorboard = out / TENSORBOARD_DIR
            # purge_step: TensorBoard hides what an interrupted run logged after iteration `done`
            writer = writer_class(log_dir=str(self.tensorboard), purge_step=done + 1 if done else None)
            if not done:
                writer.add_text("config", "\n".join("    " + line for line in config_toml.splitlines()), 0)
            self.writers.append(writer)

    def log(self, metrics: dict) -> None:
        step = int(metrics["iteration"])
        for writer in self.writers:
            for key, value in metrics.items():
                if key != "iteration" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    writer.add_scalar(scalar_name(key), value, step)
            writer.flush()

    def close(self) -> None:
        for writer in self.writers:
            writer.close()
        self.writers = []


def _summary_writer():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise RlgfError("--log-to tensorboard needs the tensorboard package, which is not installed",
                        "pip install tensorboard (or rlgf[tensorboard]), or leave out --log-to") from None
    return SummaryWriter

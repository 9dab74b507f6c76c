"""Progress reporters the CLI hands to the library (the library never prints)."""

from __future__ import annotations

from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from rlgf_cli.commands.console import err_console, is_terminal


class TrainProgress:
    """Callback for :func:`rlgf_cli.training.run.train`: a rich bar on a terminal, plain lines otherwise."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.live = is_terminal() and not quiet
        self.progress: Progress | None = None
        self.task_id = None

    def __call__(self, event: str, payload: dict[str, Any]) -> None:
        if self.quiet:
            return
        if event == "start":
            if self.live:
                self.progress = Progress(
                    TextColumn("[bold]train[/]"),
                    BarColumn(),
                    MofNCompleteColumn(),
                    TextColumn("{task.fields[status]}"),
                    TimeElapsedColumn(),
                    TextColumn("ETA"),
                    TimeRemainingColumn(),
                    console=err_console,
                )
                self.progress.start()
                self.task_id = self.progress.add_task("train", total=payload["total"], completed=payload.get("done", 0), status="")
            err_console.print(f"run folder: {payload['out']}", markup=False)
        elif event == "iteration":
            line = format_iteration(payload)
            if self.progress is not None:  # a line per iteration stays above the bar, which keeps its room
                self.progress.console.print(line, markup=False)
                self.progress.update(self.task_id, advance=1, status="")
            else:
                err_console.print(line, markup=False)
        elif event == "phase":
            if self.progress is not None:
                self.progress.update(self.task_id, status=payload["name"] + "…")
        elif event in ("message", "checkpoint"):
            text = payload.get("text") or f"checkpoint: {payload['path']}"
            err_console.print(text, markup=False)
        elif event == "end":
            self.close()

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def format_iteration(m: dict[str, Any]) -> str:
    parts = [f"iter {m['iteration']}"]
    if "reward_mean" in m:
        parts.append(f"reward {m['reward_mean']:.3f}")
        # the exact per-token KL(π‖π_ref) from the logits, which cannot go negative (the sampled
        # estimate in ``kl`` can, which reads as a bug); PPO's approx_kl is the step-size gauge
        if m.get("kl_exact") is not None:
            parts.append(f"kl/token {m['kl_exact']:.3f}")
        else:
            parts.append(f"kl {m.get('kl', 0.0):.3f}")
        if m.get("approx_kl") is not None:
            parts.append(f"approx_kl {m['approx_kl']:.3f}")
    if "bc_loss" in m:
        parts.append(f"bc loss {m['bc_loss']:.3f}")
    parts.append(f"{m.get('time_s', 0.0):.1f}s")
    return " · ".join(parts)


class CountProgress:
    """A simple counted bar (evaluation); silent off a terminal."""

    def __init__(self, label: str, quiet: bool = False) -> None:
        self.label = label
        self.enabled = is_terminal() and not quiet
        self.progress: Progress | None = None
        self.task_id = None

    def __enter__(self) -> "CountProgress":
        if self.enabled:
            self.progress = Progress(
                TextColumn(f"[bold]{self.label}[/]"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                console=err_console, transient=True,
            )
            self.progress.start()
            self.task_id = self.progress.add_task(self.label, total=None)
        return self

    def __call__(self, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress.update(self.task_id, completed=done, total=total)

    def __exit__(self, *exc: Any) -> None:
        if self.progress is not None:
            self.progress.stop()

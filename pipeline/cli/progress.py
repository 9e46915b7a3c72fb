"""A rich progress display for long-running phases (one bar per phase, ETA, live metrics)."""

from __future__ import annotations

from types import TracebackType

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from pipeline.cli.app import console


class PhaseProgress:
    """Call with (phase, step, total, metrics); a new phase name starts a new bar."""

    def __init__(self, keys: tuple[str, ...] = ()) -> None:
        self.keys = keys
        self.progress = Progress(
            TextColumn("[bold]{task.description:<12}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=console,
            refresh_per_second=2,
        )
        self.tasks: dict[str, int] = {}

    def __call__(self, phase: str, step: int, total: int, metrics: dict[str, float]) -> None:
        if phase not in self.tasks:
            self.tasks[phase] = self.progress.add_task(phase, total=total, completed=0, info="")
        keys = self.keys or tuple(metrics)[:4]
        info = " ".join(f"{k}={metrics[k]:.3g}" for k in keys if k in metrics)
        self.progress.update(self.tasks[phase], completed=step, total=total, info=info)

    def __enter__(self) -> PhaseProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.progress.__exit__(et, e, tb)

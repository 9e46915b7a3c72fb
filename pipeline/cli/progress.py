"""Progress of long-running phases: rich bars on a terminal, plain timestamped log lines otherwise.

On a terminal: one bar per phase, with ETA and live metrics. When stderr is not a terminal (a log
file, cron, nohup, a CI job) a bar would only show up, in its final state, when the process ends;
there every phase logs plain, unwrapped, timestamped lines as it goes instead: one when it starts,
one per step for phases of few steps (shards, stages), at most every HEARTBEAT_S for phases of many
(training steps), one when it ends, and a "still working" line whenever HEARTBEAT_S pass without one.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime
from types import TracebackType

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from pipeline.cli.app import console

# Longest silence in plain mode, in seconds.
HEARTBEAT_S = 30.0
# Phases with at most this many steps log every step (a shard, a stage); longer ones are throttled.
EVERY_STEP_MAX = 200


def plain_output() -> bool:
    """True when stderr is not a terminal: log lines, not progress bars."""
    return not console.is_terminal


def log_line(message: str) -> None:
    """One plain line on stderr, local time with offset first; never wrapped, no markup."""
    stamp = datetime.now().astimezone().isoformat(timespec="seconds")
    console.out(f"{stamp} {message}", highlight=False)
    console.file.flush()


class _PlainLog:
    """The plain-text counterpart of the bars (see the module docstring)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.phase: str | None = None
        self.step = 0
        self.total = 0
        self.info = ""
        self.phase_started = time.monotonic()
        self.last_line = time.monotonic()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._heartbeat, name="progress-heartbeat", daemon=True)

    def _emit(self, message: str) -> None:
        log_line(message)
        self.last_line = time.monotonic()

    def _finish_phase(self) -> None:
        if self.phase is not None and self.step < self.total:
            self._emit(f"{self.phase}: stopped at {self.step}/{self.total} after {self._elapsed()}")

    def _elapsed(self) -> str:
        return f"{time.monotonic() - self.phase_started:.1f} s"

    def update(self, phase: str, step: int, total: int, info: str) -> None:
        with self.lock:
            if phase != self.phase:
                self._finish_phase()
                self.phase, self.step, self.phase_started = phase, 0, time.monotonic()
                self._emit(f"{phase}: started ({total} step{'s' if total != 1 else ''})")
            moved = step != self.step
            self.step, self.total, self.info = step, total, info
            if not moved:
                return
            suffix = f" {info}" if info else ""
            if step >= total:
                self._emit(f"{phase}: done {step}/{total} in {self._elapsed()}{suffix}")
            elif total <= EVERY_STEP_MAX or time.monotonic() - self.last_line >= HEARTBEAT_S:
                self._emit(f"{phase}: {step}/{total} after {self._elapsed()}{suffix}")

    def _heartbeat(self) -> None:
        while not self.stop.wait(min(1.0, HEARTBEAT_S / 2)):
            with self.lock:
                if time.monotonic() - self.last_line < HEARTBEAT_S:
                    continue
                where = f"{self.phase} at {self.step}/{self.total}" if self.phase else "starting"
                self._emit(f"still working: {where}, {self._elapsed()} in this phase")

    def __enter__(self) -> _PlainLog:
        self.thread.start()
        return self

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        with self.lock:
            self._finish_phase()


class PhaseProgress:
    """Call with (phase, step, total, metrics); a new phase name starts a new bar (or log phase)."""

    def __init__(self, keys: tuple[str, ...] = (), *, plain: bool | None = None) -> None:
        self.keys = keys
        self.plain = plain_output() if plain is None else plain
        self.log = _PlainLog() if self.plain else None
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
        keys = self.keys or tuple(metrics)[:4]
        info = " ".join(f"{k}={metrics[k]:.3g}" for k in keys if k in metrics)
        if self.log is not None:
            self.log.update(phase, step, total, info)
            return
        if phase not in self.tasks:
            self.tasks[phase] = self.progress.add_task(phase, total=total, completed=0, info="")
        self.progress.update(self.tasks[phase], completed=step, total=total, info=info)

    def __enter__(self) -> PhaseProgress:
        if self.log is not None:
            self.log.__enter__()
        else:
            self.progress.__enter__()
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        if self.log is not None:
            self.log.close()
        else:
            self.progress.__exit__(et, e, tb)

"""The shared Typer application and the option helpers every command uses."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from pipeline.config import Config, ConfigError, load_config
from pipeline.locks import LockHeld

os.environ.setdefault("DO_NOT_TRACK", "1")
# The temporary server's telemetry heartbeat races its own SQLite writes and logs a "database is locked" traceback.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

app = typer.Typer(
    name="fersynth",
    help="Synthetic facial-expression datasets from a decoupling GAN.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Make, import and inspect labelled face datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")

console = Console(stderr=True)
if not console.is_terminal:
    # A log file, cron or nohup: lines are never wrapped at 80 columns (tables take their natural width).
    console = Console(stderr=True, soft_wrap=True, width=10_000)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file (defaults if omitted).")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override one field, e.g. --set train.batch_size=16 (repeatable)."),
]

T = TypeVar("T")

# Errors that are the user's input, not our bug: shown as one clear line, exit code 2.
USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, FileNotFoundError, FileExistsError, ValueError, LockHeld)


def load(config: Path | None, sets: list[str] | None) -> Config:
    return guarded(lambda: load_config(config, sets or []))


def guarded(fn: Callable[[], T]) -> T:
    """Run `fn`, turning input and filesystem errors into one red line and exit code 2 instead of a traceback."""
    try:
        return fn()
    except USER_ERRORS as exc:
        fail(os_error_line(exc) if isinstance(exc, OSError) else str(exc))
    except OSError as exc:  # the last line of defence: a filesystem failure no check caught first
        fail(os_error_line(exc))
    except Exception as exc:
        if not isinstance(exc.__cause__, OSError):  # ours (e.g. ShardError) wrapping a filesystem failure
            raise
        fail(str(exc))


def fail(message: str) -> NoReturn:
    """Print `message` as one error line and exit 2."""
    one_line = escape(" ".join(message.split()))
    console.print(f"[bold red]error:[/] {one_line}", markup=True, highlight=False, soft_wrap=True)
    raise typer.Exit(code=2) from None


def os_error_line(exc: OSError) -> str:
    """'PATH: cause' for an OSError (its own text when it names no path)."""
    if exc.filename is None:
        return str(exc)
    paths = f"{exc.filename} -> {exc.filename2}" if exc.filename2 is not None else str(exc.filename)
    return f"{paths}: {exc.strerror or exc}"


def echo_kv(title: str, rows: dict[str, Any]) -> None:
    console.print(f"[bold]{title}[/]")
    for k, v in rows.items():
        console.print(f"  {k}: {v}", highlight=False)

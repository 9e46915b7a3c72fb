"""One writer at a time: a lock per dataset being generated, per training run folder, per `data make` folder.

A lock is an `fcntl.flock` on `<parent>/.<name>.lock`, beside the folder it guards and never inside it
(so it is never published with a dataset), plus a sidecar `<parent>/.<name>.lock.json` naming the
holder (pid, host, start time, command) for the one line a second writer prints. The kernel drops a
flock when its process dies, so a lock file that can be flocked is free: a sidecar left behind by a
killed run is stale, and the new run takes the lock over and rewrites it.

A second acquire of a held lock refuses at once (`LockHeld`), even from the same process: a writer
never waits behind another one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shlex
import socket
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from pipeline.io_utils import atomic_write_json

log = logging.getLogger(__name__)


class LockHeld(RuntimeError):
    """Another run holds the lock; the message names it (pid, host, start time, command)."""


@dataclass(frozen=True)
class Holder:
    pid: int
    host: str
    started: str
    command: str

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}, started {self.started} ({self.command})"


def lock_file_for(folder: Path) -> Path:
    """Where the lock of `folder` lives: a hidden file beside it (the same folder spelled twice is one lock)."""
    folder = Path(folder).absolute().resolve()
    return folder.parent / f".{folder.name}.lock"


def sidecar_for(lock_file: Path) -> Path:
    return lock_file.with_name(lock_file.name + ".json")


def this_holder() -> Holder:
    return Holder(
        pid=os.getpid(),
        host=socket.gethostname(),
        started=datetime.now(UTC).isoformat(timespec="seconds"),
        command=shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv and sys.argv[0] else "python",
    )


def read_holder(lock_file: Path) -> Holder | None:
    """The holder a lock's sidecar names, or None when it is missing or unreadable."""
    try:
        raw = json.loads(sidecar_for(lock_file).read_text(encoding="utf-8"))
        return Holder(int(raw["pid"]), str(raw["host"]), str(raw["started"]), str(raw.get("command", "")))
    except (OSError, ValueError, KeyError, TypeError):
        return None


class WriterLock:
    """A held lock; `release` (or leaving `writer_lock`) gives it back."""

    def __init__(self, folder: Path, what: str) -> None:
        self.folder = Path(folder)
        self.what = what
        self.path = lock_file_for(folder)
        self.holder = this_holder()
        self.stale: Holder | None = None  # the killed run whose lock was taken over
        self._fd: int | None = None

    def acquire(self) -> WriterLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LockHeld(self._busy_message()) from None
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        # We hold the flock, so whoever the sidecar still names is gone (killed, or on another host
        # whose filesystem does not share flocks: named in the log so that case is visible).
        self.stale = read_holder(self.path)
        if self.stale is not None:
            log.warning("took over the stale lock of %s on %s: %s", self.what, self.folder, self.stale.describe())
        atomic_write_json(sidecar_for(self.path), asdict(self.holder))
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        # The sidecar goes first, while the flock still keeps others out.
        sidecar_for(self.path).unlink(missing_ok=True)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def _busy_message(self) -> str:
        holder = read_holder(self.path)
        who = holder.describe() if holder else "another process (its lock record is not written yet)"
        return f"{self.folder}: {self.what} is already running: {who}; wait for it or stop it (lock {self.path})"


@contextlib.contextmanager
def writer_lock(folder: Path, what: str) -> Iterator[WriterLock]:
    """Hold the one-writer lock of `folder` for the block; raises LockHeld at once if another run holds it."""
    lock = WriterLock(folder, what).acquire()
    try:
        yield lock
    finally:
        lock.release()

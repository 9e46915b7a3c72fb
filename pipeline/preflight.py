"""Filesystem checks every command runs before its first expensive step (planning, rendering, training).

Each failure is a `PreflightError` whose message is one line naming the path and the cause; the CLI
prints it and exits 2.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

# Below this much free space no command gets far (a shard, a checkpoint, a card); refusing up front
# beats dying half way with ENOSPC.
MIN_FREE_BYTES = 64 << 20


class PreflightError(ValueError):
    """A path a command needs is missing, of the wrong kind, not writable, or on a full disk."""


def readable_file(path: Path, label: str) -> Path:
    """`path` is an existing regular file this user can read."""
    return _readable(Path(path), label, Path.is_file, "is a folder, not a file", os.R_OK)


def _readable(path: Path, label: str, right_kind, wrong_kind: str, access: int) -> Path:
    if not path.exists():
        raise PreflightError(f"{label} {path}: does not exist")
    if not right_kind(path):
        raise PreflightError(f"{label} {path}: {wrong_kind}")
    if not os.access(path, access):
        raise PreflightError(f"{label} {path}: is not readable by this user")
    return path


def writable_folder(path: Path, label: str, min_free: int = MIN_FREE_BYTES) -> Path:
    """`path` is a folder (or can be made one) that this user can write, on a disk with room left."""
    path = Path(path)
    existing = _nearest_existing(path)
    if not existing.is_dir():
        if existing == path:
            raise PreflightError(f"{label} {path}: is a regular file, not a folder")
        raise PreflightError(f"{label} {path}: cannot be created: {existing} is a regular file, not a folder")
    why = _not_writable(existing)
    if why:
        where = "" if existing == path else f" (nearest existing folder {existing})"
        raise PreflightError(f"{label} {path}: {why}{where}")
    free = shutil.disk_usage(existing).free
    if free < min_free:
        raise PreflightError(f"{label} {path}: no space left ({free >> 20} MiB free, need {min_free >> 20} MiB)")
    return path


def _nearest_existing(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _not_writable(folder: Path) -> str | None:
    """Why files cannot be written in `folder`, or None."""
    if os.statvfs(folder).f_flag & os.ST_RDONLY:
        return "is on a read-only filesystem"
    mode = folder.stat().st_mode
    # No write bit for anyone marks a folder read-only even for root, who would pass os.access.
    if not mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH):
        return f"is read-only (mode {stat.S_IMODE(mode):04o})"
    if not os.access(folder, os.W_OK | os.X_OK):
        return "is not writable by this user"
    return None

"""Small I/O helpers every stage shares: atomic writes, content hashes, placing a file by link or copy."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

CHUNK = 1 << 20


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed over `path`.

    The temporary name starts with '.tmp-' so pyarrow dataset discovery and globbing ignore it,
    and an interrupted write never leaves a half file under the final name.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{final.name}.", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, final)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def remove_owned(root: Path, names: Iterable[str]) -> None:
    """Delete only the entries of `root` a writer owns (files or folders); the user's files stay."""
    for name in names:
        p = Path(root) / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def inside_root(root: Path, rel: str) -> Path:
    """Resolve `rel` under `root`, refusing absolute paths and '..' escapes."""
    root_r = root.resolve()
    p = (root_r / rel).resolve()
    if not p.is_relative_to(root_r):
        raise ValueError(f"path {rel!r} escapes the dataset root {root}")
    return p


def copy_hashing(src: Path, dst: Path) -> str:
    """Copy `src` to `dst` with its times and mode; returns the sha256 of the bytes written (source read once)."""
    h = hashlib.sha256()
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        while chunk := fin.read(CHUNK):
            h.update(chunk)
            fout.write(chunk)
    shutil.copystat(src, dst)
    return h.hexdigest()


def place_file(src: Path, dst: Path, *, link: bool = True, hashed: bool = False) -> tuple[str, str | None]:
    """Put `src` at `dst`, making its folder: a hard link if asked and possible, else a copy with its
    times and mode. Returns (how: "link" or "copy", the sha256 of `dst` when `hashed`, else None).

    A hard link is safe to share with a published file: atomic writes replace files, never edit them.
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    if link:
        try:
            os.link(src, dst)
            return "link", sha256_file(dst) if hashed else None
        except OSError:  # another file system, or links not allowed: fall back to a copy
            pass
    if hashed:
        return "copy", copy_hashing(src, dst)
    shutil.copy2(src, dst)
    return "copy", None

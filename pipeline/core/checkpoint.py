"""Checkpoints as data: tensors, numbers and JSON strings only, written atomically, loaded safely.

Everything goes through `torch.load(..., weights_only=True)`, so a checkpoint can never run code
when opened. The config travels as a JSON string and is compared with the one a user asks for.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from pipeline.io_utils import atomic_path

FORMAT = "fersynth.checkpoint.v1"
# torch's refusal of a pickled object names it after "WeightsUnpickler error:" amid advice that does not apply here.
_REFUSED_OBJECT = re.compile(r"WeightsUnpickler error:\s*(.+?)(?:\s+was not an allowed global|\.\s|\n|$)")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, corrupt, truncated or from another config."""


def save_checkpoint(path: Path, payload: dict[str, Any]) -> Path:
    payload = {"format": FORMAT, **payload}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    return _load(path, path, map_location)


def read_checkpoint(path: Path) -> tuple[dict[str, Any], str]:
    """(payload on the CPU, sha256 of the file) from one read of its bytes."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    data = path.read_bytes()
    return _load(io.BytesIO(data), path, "cpu"), hashlib.sha256(data).hexdigest()


def _load(source: Path | io.BytesIO, path: Path, map_location: str | torch.device) -> dict[str, Any]:
    try:
        ckpt = torch.load(source, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(_refusal_line(path, exc)) from exc
    except Exception as exc:  # truncated zip, damaged archive...
        raise CheckpointError(
            f"{path}: corrupted or truncated checkpoint ({type(exc).__name__}: {_first_line(exc)})"
        ) from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not a fersynth checkpoint (format {ckpt.get('format') if isinstance(ckpt, dict) else type(ckpt).__name__!r})"
        )
    return ckpt


def _refusal_line(path: Path, exc: pickle.UnpicklingError) -> str:
    """One line for a checkpoint holding Python objects: torch's advice to load it unsafely is left out on purpose."""
    found = _REFUSED_OBJECT.search(str(exc))
    what = found.group(1).strip() if found else _first_line(exc)
    return (
        f"{path}: refused: it holds Python objects, not only tensors and numbers ({what}); "
        "fersynth loads checkpoints as data so that opening one never runs code: this is not a fersynth checkpoint"
    )


def _first_line(exc: BaseException) -> str:
    """The first sentence of `exc`: torch's further sentences are advice for other situations."""
    line = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
    return line.split(". ", 1)[0].rstrip(".")

"""Checkpoints as data: tensors, numbers and JSON strings only, written atomically, loaded safely.

Everything goes through `torch.load(..., weights_only=True)`, so a checkpoint can never run code
when opened. The config travels as a JSON string and is compared with the one a user asks for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pipeline.io_utils import atomic_path, sha256_file

FORMAT = "fersynth.checkpoint.v1"


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
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, bad pickle opcode, disallowed global...
        raise CheckpointError(f"{path}: corrupted or truncated checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not a fersynth checkpoint (format {ckpt.get('format') if isinstance(ckpt, dict) else type(ckpt).__name__!r})"
        )
    return ckpt


def checkpoint_sha256(path: Path) -> str:
    return sha256_file(path)

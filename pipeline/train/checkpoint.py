"""Checkpoints as data: tensors, numbers and JSON strings only, written atomically, loaded safely.

Everything goes through `torch.load(..., weights_only=True)`, so a checkpoint can never run code
when opened. The config travels as a JSON string and is compared with the one a user asks for.
"""

from __future__ import annotations

import hashlib
import json
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


def model_signature(model_cfg: dict[str, Any]) -> str:
    """Hash of the architecture-defining config: two checkpoints with equal signatures are compatible."""
    return hashlib.sha256(json.dumps(model_cfg, sort_keys=True).encode()).hexdigest()[:16]


def check_compatible(ckpt: dict[str, Any], model_cfg: dict[str, Any], path: Path) -> None:
    saved = json.loads(ckpt["config"])["model"]
    if saved != model_cfg:
        diffs = [
            f"model.{k}: checkpoint={saved.get(k)!r} config={model_cfg.get(k)!r}"
            for k in sorted(set(saved) | set(model_cfg))
            if saved.get(k) != model_cfg.get(k)
        ]
        raise CheckpointError(f"{path} was trained with another model config: " + "; ".join(diffs))

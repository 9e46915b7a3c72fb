"""The one place a device setting ("auto", "cpu", "cuda", ...) becomes a torch.device."""

from __future__ import annotations

import torch


def resolve_device(name: str | torch.device | None = "auto", setting: str = "device") -> torch.device:
    """'auto' (or None) is CUDA where there is one, else the CPU; 'cuda' without one is a ValueError
    naming `setting` (e.g. "train.device")."""
    if isinstance(name, torch.device):
        return name
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{setting}=cuda but no CUDA device is available")
    return torch.device(name)

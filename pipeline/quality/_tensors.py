"""Input conventions shared by the quality checks.

Images reach the checks as NCHW tensors (or arrays) in one of two encodings: uint8 in [0, 255]
(decoded PNGs) or float. What a float means differs per check (the generator emits [-1, 1], FID
wants [0, 1]), so every converter names the float range it accepts and refuses values outside it
instead of silently clipping, which would hide a wrong convention upstream.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import numpy as np
import torch

from pipeline.core.device import resolve_device as resolve_device  # re-exported: the quality modules import it here

Device = Literal["auto", "cpu", "cuda"] | str
_TOL = 1e-3  # float slack for values produced by resizing/averaging


def as_nchw_tensor(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """A 4-D NCHW tensor with 1 or 3 channels (a single CHW image becomes a batch of one)."""
    x = torch.as_tensor(images)
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected NCHW images with 1 or 3 channels, got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError("empty image batch")
    return x


def _check_range(x: torch.Tensor, lo: float, hi: float, what: str) -> None:
    if not torch.isfinite(x).all():
        raise ValueError(f"{what}: images contain NaN or infinite values")
    mn, mx = float(x.min()), float(x.max())
    if mn < lo - _TOL or mx > hi + _TOL:
        raise ValueError(f"{what}: float images must lie in [{lo:g}, {hi:g}], got [{mn:.3f}, {mx:.3f}]")


def to_unit_range(images: torch.Tensor | np.ndarray, what: str = "images") -> torch.Tensor:
    """uint8 [0, 255] or float [0, 1] NCHW -> float32 [0, 1] RGB (grey is repeated to 3 channels)."""
    x = as_nchw_tensor(images)
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    elif x.is_floating_point():
        _check_range(x, 0.0, 1.0, what)
        x = x.float().clamp(0.0, 1.0)
    else:
        raise TypeError(f"{what}: expected uint8 or float images, got {x.dtype}")
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def to_signed_range(images: torch.Tensor | np.ndarray, what: str = "images") -> torch.Tensor:
    """uint8 [0, 255] or float [-1, 1] NCHW -> float32 [-1, 1] RGB (the generator's convention)."""
    x = as_nchw_tensor(images)
    if x.dtype == torch.uint8:
        x = x.float() / 127.5 - 1.0
    elif x.is_floating_point():
        _check_range(x, -1.0, 1.0, what)
        x = x.float().clamp(-1.0, 1.0)
    else:
        raise TypeError(f"{what}: expected uint8 or float images, got {x.dtype}")
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def iter_batches(n: int, batch_size: int) -> Iterator[slice]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))

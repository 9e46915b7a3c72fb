"""Sample grids (identities x expressions) as PNG: what a person checks first after training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from pipeline.expressions import EXPRESSIONS
from pipeline.io_utils import atomic_path


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[-1,1] NCHW tensor -> uint8 NHWC array."""
    return ((x.detach().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def compose_grid(
    rows: list[list[np.ndarray]],
    col_labels: list[str] | None = None,
    row_labels: list[str] | None = None,
    cell: int = 96,
) -> Image.Image:
    """Tile HWC uint8 images into a labelled grid (nearest upscale keeps pixels honest)."""
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    top = 16 if col_labels else 0
    left = 64 if row_labels else 0
    canvas = Image.new("RGB", (left + n_cols * cell, top + n_rows * cell), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for j, label in enumerate(col_labels or []):
        draw.text((left + j * cell + 4, 2), label, fill=(0, 0, 0))
    for i, row in enumerate(rows):
        if row_labels:
            draw.text((2, top + i * cell + cell // 2 - 6), row_labels[i][:10], fill=(0, 0, 0))
        for j, img in enumerate(row):
            tile = Image.fromarray(img).resize((cell, cell), Image.Resampling.NEAREST)
            canvas.paste(tile, (left + j * cell, top + i * cell))
    return canvas


def save_png(img: Image.Image, path: Path) -> Path:
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return path


@torch.no_grad()
def expression_grid(
    generator: torch.nn.Module,
    sources: torch.Tensor,
    w_id: torch.Tensor,
    exp_codes: torch.Tensor,
    resolution: int,
    row_labels: list[str],
) -> Image.Image:
    """Rows: identities (first column: the source image); columns: the 7 target expressions."""
    n, k = w_id.shape[0], exp_codes.shape[0]
    ids = w_id.repeat_interleave(k, 0)
    exps = exp_codes.repeat(n, 1)
    small = torch.nn.functional.interpolate(sources, size=(resolution, resolution), mode="area")
    # With an edit mask the swaps are drawn over their source, as the product renders real identities.
    out = generator(ids, exps, resolution, 1.0, source=small.repeat_interleave(k, 0))
    out = to_uint8(out).reshape(n, k, resolution, resolution, 3)
    src = to_uint8(small)
    rows = [[src[i], *list(out[i])] for i in range(n)]
    return compose_grid(rows, ["source", *EXPRESSIONS[:k]], row_labels)

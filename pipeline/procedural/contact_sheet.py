"""A labelled grid of faces (rows = identities, columns = expressions) for checking data by eye."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pipeline.io_utils import atomic_path


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow built without FreeType: fixed-size bitmap font
        return ImageFont.load_default()


def grid_image(
    cells: Sequence[Sequence[np.ndarray]], row_labels: Sequence[str], col_labels: Sequence[str], cell: int = 112
) -> Image.Image:
    """Tile uint8 HxWx3 arrays into a labelled grid, each cell resized to `cell` px."""
    n_rows, n_cols = len(cells), max((len(r) for r in cells), default=0)
    left, top, pad = 110, 26, 4
    sheet = Image.new("RGB", (left + n_cols * (cell + pad), top + n_rows * (cell + pad)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = _font(13)
    for j, label in enumerate(col_labels):
        draw.text((left + j * (cell + pad) + cell // 2, top // 2), label, fill=(0, 0, 0), font=font, anchor="mm")
    for i, row in enumerate(cells):
        y = top + i * (cell + pad)
        draw.text((6, y + cell // 2), row_labels[i], fill=(0, 0, 0), font=font, anchor="lm")
        for j, arr in enumerate(row):
            im = Image.fromarray(arr)
            if im.size != (cell, cell):
                im = im.resize((cell, cell), Image.Resampling.LANCZOS)
            sheet.paste(im, (left + j * (cell + pad), y))
    return sheet


def save_png(image: Image.Image, path: Path) -> Path:
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", optimize=True)
    return path

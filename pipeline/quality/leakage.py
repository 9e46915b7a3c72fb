"""Leakage of the source's expression into a swap: expression accuracy by source x target expression.

A swap to a target expression must read as the target whatever the source photo showed. If the
generator carries the source's mouth or brows through, accuracy to a target depends on the source:
high where the source already showed the target (the diagonal), low elsewhere. The table makes that
visible; its summary is, per target, the spread (max - min) of accuracy across source expressions.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure


def leak_table(
    source: np.ndarray, target: np.ndarray, correct: np.ndarray, n_cls: int
) -> tuple[np.ndarray, np.ndarray]:
    """(accuracy, count), each (n_cls, n_cls): rows source expression, columns target expression.

    Accuracy is the share of swaps in a cell that the judge read as the target; NaN where a cell has
    no swaps.
    """
    src, tgt = np.asarray(source, int), np.asarray(target, int)
    count = np.zeros((n_cls, n_cls), np.int64)
    hits = np.zeros((n_cls, n_cls))
    np.add.at(count, (src, tgt), 1)
    np.add.at(hits, (src, tgt), np.asarray(correct, float))
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.where(count > 0, hits / count, np.nan)
    return acc, count


def leak_spread(acc: np.ndarray) -> np.ndarray:
    """Per target (column): max - min of accuracy across source expressions; 0 means no leakage."""
    out = np.full(acc.shape[1], np.nan)
    for j, col in enumerate(acc.T):
        col = col[~np.isnan(col)]
        if col.size:
            out[j] = col.max() - col.min()
    return out


def leak_heatmap(acc: np.ndarray, names: list[str], title: str = "swap expression accuracy") -> Figure:
    """The table as a heatmap with each cell's accuracy written in it (save with `fig.savefig`)."""
    fig = Figure(figsize=(5.6, 4.8))
    ax = fig.subplots()
    im = ax.imshow(np.ma.masked_invalid(acc), vmin=0.0, vmax=1.0, cmap="viridis")
    ax.set_xticks(range(acc.shape[1]), names[: acc.shape[1]], rotation=45, ha="right")
    ax.set_yticks(range(acc.shape[0]), names[: acc.shape[0]])
    ax.set_xlabel("target expression")
    ax.set_ylabel("source expression")
    for (i, j), v in np.ndenumerate(acc):
        if not np.isnan(v):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8, color="black" if v > 0.6 else "white")
    spread = leak_spread(acc)
    ax.set_title(f"{title}\nspread across sources: mean {np.nanmean(spread):.2f}, max {np.nanmax(spread):.2f}")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig

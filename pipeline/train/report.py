"""Training report: stage table, loss curves and sample grids in one Markdown file."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from pipeline.io_utils import atomic_path, atomic_write_text

CURVES = (
    "recon",
    "swap_truth",
    "swap_truth_raw",  # edit mask: the plain RGB that novel identities get
    "recon_ssim",
    "swap_ssim",
    "swap_cls",
    "identity",
    "latent",
    "cycle",
    "mask",  # edit mask: mean opening
    "g_adv",
    "d_adv",
)


def plot_losses(history: list[dict[str, float]], path: Path) -> Path | None:
    if not history:
        return None
    keys = [k for k in CURVES if any(k in h for h in history)]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    steps = [h["step"] for h in history]
    for k in keys:
        vals = [h.get(k, float("nan")) for h in history]
        axes[0 if k not in ("g_adv", "d_adv") else 1].plot(steps, vals, label=k, lw=1)
    for ax, title in zip(axes, ("reconstruction / decoupling losses", "adversarial losses"), strict=True):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    # Mark resolution changes so a jump in loss is read as a new stage, not a failure.
    for h_prev, h in itertools.pairwise(history):
        if h["resolution"] != h_prev["resolution"]:
            for ax in axes:
                ax.axvline(h["step"], color="grey", ls="--", lw=0.6)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return path


def md_table(rows: list[dict[str, Any]], keys: list[str]) -> str:
    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    head = "| " + " | ".join(keys) + " |\n|" + "---|" * len(keys) + "\n"
    return head + "".join("| " + " | ".join(fmt(r.get(k, "")) for k in keys) + " |\n" for r in rows)


def write_training_report(
    out: Path, stage_metrics: list[dict[str, Any]], history: list[dict[str, float]], extra: dict[str, Any]
) -> Path:
    plot = plot_losses(history, out / "losses.png")
    keys = [
        "resolution",
        "steps",
        "seconds",
        "recon",
        "swap_truth",
        "swap_truth_raw",
        "swap_acc",
        "mask",
        "identity",
        "latent",
        "cycle",
        "val_recon_l1",
        "val_swap_acc_train_judge",
    ]
    keys = [k for k in keys if any(k in r for r in stage_metrics)]
    lines = ["# Training report", ""]
    for k, v in extra.items():
        lines.append(f"- **{k}**: {v}")
    lines += ["", "## Stages", "", md_table(stage_metrics, keys)]
    if plot:
        lines += ["## Losses", "", "![losses](losses.png)", ""]
    grids = sorted(out.glob("samples/stage-*.png"))
    if grids:
        lines += ["## Samples (rows: validation identities, first column the source; columns: target expressions)", ""]
        lines += [f"![{g.stem}](samples/{g.name})" for g in grids]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path

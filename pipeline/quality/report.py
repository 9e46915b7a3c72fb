"""A human-readable quality report beside a scored dataset: markdown, histograms, best/worst grids.

Everything is written atomically (temporary name, then rename) so a report folder never holds a
half-written file. Figures use matplotlib's object API (`Figure`, rendered by Agg) rather than
pyplot, so no display is needed and the process-wide pyplot backend and figure registry stay untouched
(flows may run this in worker threads).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from pipeline.config import QualityConfig
from pipeline.expressions import EXPRESSIONS
from pipeline.io_utils import atomic_path, atomic_write_text
from pipeline.quality.gates import COL_IDENTITY, COL_P_TARGET, GateReport

REPORT_DIRNAME = "quality_report"


def _fmt(v: Any) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (float, np.floating)):
        return "not computed" if math.isnan(v) else ("inf" if math.isinf(v) else f"{v:.4g}")
    return str(v)


def _md_table(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "| " + " | ".join("---" for _ in cols) + " |"]
    for _, row in df.iterrows():
        lines.append("| " + " | ".join(_fmt(row[c]).replace("|", "\\|") for c in cols) + " |")
    return "\n".join(lines)


def _save_fig(fig: Figure, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    return path


def _histogram(values: pd.Series, threshold: float | None, title: str, xlabel: str, path: Path) -> Path:
    v = values.astype(float)
    finite = v[np.isfinite(v)]
    fig = Figure(figsize=(5, 3.2))
    ax = fig.subplots()
    if len(finite):
        ax.hist(finite, bins=min(40, max(5, len(finite) // 4)), color="#4477aa", edgecolor="white")
    if threshold is not None:
        ax.axvline(threshold, color="#cc3311", linestyle="--", label=f"threshold {threshold:.3g}")
        ax.legend(loc="upper left", fontsize=8)
    n_nan = int(len(v) - len(finite))
    ax.set_title(title + (f" ({n_nan} without score)" if n_nan else ""), fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("renders")
    return _save_fig(fig, path)


def _to_hwc_uint8(images: np.ndarray | torch.Tensor) -> np.ndarray:
    """NCHW/NHWC uint8, float [0, 1] or float [-1, 1] -> NHWC uint8 for display."""
    x = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if x.ndim != 4:
        raise ValueError(f"expected a batch of images (N,H,W,C) or (N,C,H,W), got shape {x.shape}")
    if x.shape[1] in (1, 3) and x.shape[-1] not in (1, 3):
        x = x.transpose(0, 2, 3, 1)
    if x.dtype != np.uint8:
        x = x.astype(np.float64)
        if x.min() < 0:  # the generator's [-1, 1] convention
            x = (x + 1.0) / 2.0
        x = (np.clip(x, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    return x[..., 0] if x.shape[-1] == 1 else x


def _grid(images: np.ndarray, idx: np.ndarray, captions: list[str], title: str, path: Path) -> Path:
    n = len(idx)
    cols = min(8, max(1, n))
    rows = max(1, math.ceil(n / cols))
    fig = Figure(figsize=(1.6 * cols, 1.9 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for k, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if k < n:
            img = images[idx[k]]
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255)
            ax.set_title(captions[k], fontsize=6)
    fig.suptitle(title, fontsize=10)
    return _save_fig(fig, path)


def _confusion_figure(usefulness: dict[str, Any], path: Path) -> Path:
    """Row-normalised confusion matrices on real faces: recogniser trained on renders | on real images."""
    fig = Figure(figsize=(10, 4.4))
    arms = [("renders", "usefulness_confusion_synthetic", "usefulness_accuracy_synthetic")]
    arms.append(("real images", "usefulness_confusion_real", "usefulness_accuracy_real"))
    for k, (name, conf_key, acc_key) in enumerate(arms):
        ax = fig.add_subplot(1, 2, k + 1)
        conf = np.asarray(usefulness[conf_key], dtype=np.float64)
        rows = conf / np.maximum(conf.sum(1, keepdims=True), 1)
        ax.imshow(rows, vmin=0, vmax=1, cmap="Blues")
        for i, j in np.ndindex(rows.shape):
            ax.text(
                j, i, f"{rows[i, j]:.2f}", ha="center", va="center", fontsize=7, color="k" if rows[i, j] < 0.6 else "w"
            )
        ax.set_xticks(range(len(EXPRESSIONS)), EXPRESSIONS, rotation=45, ha="right")
        ax.set_yticks(range(len(EXPRESSIONS)), EXPRESSIONS if k == 0 else [])
        ax.set_xlabel("predicted")
        if k == 0:
            ax.set_ylabel("true (real faces)")
        ax.set_title(f"trained on {name}: accuracy {usefulness[acc_key]:.3f}")
    n = len(usefulness.get("usefulness_ratios") or [None])
    fig.suptitle(f"accuracies are means of {n} recogniser(s); the matrices pool them", fontsize=10)
    return _save_fig(fig, path)


def default_rank_scores(df: pd.DataFrame) -> np.ndarray:
    """Mean of identity cosine and target probability (both 'higher is better'); NaN ranks worst."""
    parts = [df[c].astype(float).to_numpy() for c in (COL_IDENTITY, COL_P_TARGET) if c in df]
    if not parts:
        raise KeyError(f"need {COL_IDENTITY} or {COL_P_TARGET} to rank renders, or pass rank_scores")
    return np.mean(np.stack(parts), axis=0)


def write_quality_report(
    dataset_dir: Path | str,
    gate_report: GateReport,
    per_image_df: pd.DataFrame,
    per_expression: pd.DataFrame | None = None,
    images: np.ndarray | torch.Tensor | None = None,
    rank_scores: np.ndarray | None = None,
    cfg: QualityConfig | None = None,
    identity_threshold: float | None = None,
    n_grid: int = 16,
    title: str = "Quality report",
    folder_name: str = REPORT_DIRNAME,
    usefulness: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """Write `<dataset_dir>/<folder_name>/` and return {name: path} of what was written.

    images (optional) are the renders in per_image_df's row order (N,H,W,C or N,C,H,W; uint8,
    [0, 1] or [-1, 1]); with them come best/worst grids ranked by `rank_scores` (default: the
    mean of identity cosine and target probability; NaN counts as worst). Threshold lines come
    from `cfg`; pass `identity_threshold` when the embedder backend (not FaceNet's) was used.
    `usefulness` (the usefulness gate's figures) adds its confusion matrices.
    """
    out = Path(dataset_dir) / folder_name
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    df = per_image_df.reset_index(drop=True)

    if COL_IDENTITY in df:
        thr = identity_threshold if identity_threshold is not None else (cfg.identity_threshold if cfg else None)
        paths["identity_hist"] = _histogram(
            df[COL_IDENTITY], thr, "Identity cosine to source", "cosine", out / "identity_hist.png"
        )
    if COL_P_TARGET in df:
        # One line only when one threshold holds for every class (per-class ones are in the card).
        per_class = cfg is not None and bool(cfg.expression_thresholds)
        thr = None if cfg is None or per_class else cfg.expression_threshold
        hist_title = "Classifier probability of target" + (" (thresholds per class)" if per_class else "")
        paths["expression_hist"] = _histogram(
            df[COL_P_TARGET], thr, hist_title, "p(target)", out / "expression_hist.png"
        )

    if images is not None:
        imgs = _to_hwc_uint8(images)
        if len(imgs) != len(df):
            raise ValueError(f"{len(imgs)} images but {len(df)} per-image rows")
        scores = default_rank_scores(df) if rank_scores is None else np.asarray(rank_scores, dtype=np.float64)
        if len(scores) != len(df):
            raise ValueError(f"{len(scores)} rank scores but {len(df)} per-image rows")
        key = np.where(np.isfinite(scores), scores, -np.inf)
        order = np.argsort(-key, kind="stable")
        k = min(n_grid, len(df))

        def caption(i: int) -> str:
            label = str(df.loc[i, "expression"]) if "expression" in df else ""
            return f"{label} {_fmt(scores[i])}".strip()

        best, worst = order[:k], order[::-1][:k]
        paths["best_grid"] = _grid(imgs, best, [caption(i) for i in best], f"Best {k} renders", out / "best.png")
        paths["worst_grid"] = _grid(imgs, worst, [caption(i) for i in worst], f"Worst {k} renders", out / "worst.png")

    if usefulness and usefulness.get("usefulness_confusion_synthetic") is not None:
        paths["usefulness_confusion"] = _confusion_figure(usefulness, out / "usefulness_confusion.png")

    verdict = "PASSED" if gate_report.passed else "REJECTED"
    md = [f"# {title}", "", f"**Verdict: {verdict}** ({len(df)} renders)", ""]
    if not gate_report.passed:
        md += [f"Failed: {gate_report.failed_message()}", ""]
    md += ["## Gates", "", _md_table(gate_report.to_frame()), ""]
    if per_expression is not None and not per_expression.empty:
        md += ["## FID / KID per expression", "", _md_table(per_expression), ""]
    flag_cols = [c for c in ("identity_pass", "expression_pass", "ssim_pass", "all_pass") if c in df]
    if flag_cols and "expression" in df:
        rates = df.groupby("expression")[flag_cols].mean(numeric_only=False).reset_index()
        rates.insert(1, "n", df.groupby("expression").size().to_numpy())
        md += ["## Pass rates per expression", "", _md_table(rates), ""]
    figs = [
        ("Identity scores", "identity_hist"),
        ("Expression scores", "expression_hist"),
        ("Best renders", "best_grid"),
        ("Worst renders", "worst_grid"),
        ("What a recogniser trained on the renders recognises in real faces", "usefulness_confusion"),
    ]
    md += ["## Figures", ""]
    md += [f"![{name}]({paths[key].name})" for name, key in figs if key in paths]
    report = out / "report.md"
    atomic_write_text(report, "\n".join(md) + "\n")
    paths["report"] = report
    return paths

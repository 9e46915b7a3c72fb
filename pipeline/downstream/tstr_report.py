"""The TSTR report: mean and spread over seeds per recipe and arm, the targets, table and bar plot.

Works on finished arm results only (a frame with one row per recipe x seed x arm), so a report can
be rebuilt at any time from what an interrupted run left (`fersynth tstr --report-only`).

Targets (issue 20), per recipe, on the mean accuracy over the seeds every arm involved finished:
    synthetic >= 0.85 x real-matched
    real-small+synthetic >= real-small+real-matched - 0.02
    real-small+synthetic > real-small, whenever real-small+real-matched is above real-small
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.io_utils import atomic_write_json, atomic_write_text

SYNTHETIC_RATIO = 0.85  # synthetic only must reach this share of real-matched
MIX_MARGIN = 0.02  # small real + synthetic may trail small real + real-matched by this much
RUNS_CSV, SUMMARY_CSV, TABLE_MD, PLOT_PNG, RESULT_JSON = (
    "tstr.csv",
    "tstr_summary.csv",
    "tstr.md",
    "tstr.png",
    "tstr.json",
)


def _std(s: pd.Series) -> float:
    return float(s.std(ddof=1)) if len(s) > 1 else 0.0


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (recipe, arm), in first-seen order: seeds, mean and std of accuracy and macro F1."""
    g = runs.groupby(["recipe", "arm"], sort=False)
    return pd.DataFrame(
        {
            "seeds": g["seed"].nunique(),
            "accuracy_mean": g["accuracy"].mean(),
            "accuracy_std": g["accuracy"].agg(_std),
            "macro_f1_mean": g["macro_f1"].mean(),
            "macro_f1_std": g["macro_f1"].agg(_std),
            "n_train": g["n_train"].max(),
        }
    ).reset_index()


def _common_means(runs: pd.DataFrame, recipe: str, arms: list[str]) -> tuple[dict[str, float], int] | None:
    d = runs[(runs["recipe"] == recipe) & runs["arm"].isin(arms)]
    per_arm = [set(d.loc[d["arm"] == a, "seed"]) for a in arms]
    seeds = set.intersection(*per_arm)
    if not seeds:
        return None
    d = d[d["seed"].isin(seeds)]
    return {a: float(d.loc[d["arm"] == a, "accuracy"].mean()) for a in arms}, len(seeds)


def targets(runs: pd.DataFrame) -> list[dict[str, Any]]:
    """Every target of every recipe: {recipe, target, passed (True/False/None = not applicable), line}."""
    out: list[dict[str, Any]] = []

    def add(recipe: str, target: str, passed: bool | None, detail: str, n: int) -> None:
        verdict = "n/a" if passed is None else ("PASS" if passed else "FAIL")
        line = f"[{recipe}] {target}: {verdict} ({detail}; {n} seed{'s' * (n != 1)})"
        out.append({"recipe": recipe, "target": target, "passed": passed, "line": line})

    for recipe in dict.fromkeys(runs["recipe"]):
        t1 = f"synthetic >= {SYNTHETIC_RATIO} x real-matched"
        got = _common_means(runs, recipe, ["synthetic", "real-matched"])
        if got:
            m, n = got
            bar = SYNTHETIC_RATIO * m["real-matched"]
            add(recipe, t1, m["synthetic"] >= bar, f"{m['synthetic']:.3f} vs {bar:.3f}", n)
        got = _common_means(runs, recipe, ["real-small", "real-small+synthetic", "real-small+real-matched"])
        if got:
            m, n = got
            mix, ceiling, small = m["real-small+synthetic"], m["real-small+real-matched"], m["real-small"]
            t2 = f"real-small+synthetic >= real-small+real-matched - {MIX_MARGIN}"
            add(recipe, t2, mix >= ceiling - MIX_MARGIN, f"{mix:.3f} vs {ceiling - MIX_MARGIN:.3f}", n)
            t3 = "real-small+synthetic > real-small (when real-small+real-matched is)"
            helps = ceiling > small
            add(
                recipe,
                t3,
                mix > small if helps else None,
                f"{mix:.3f} vs {small:.3f}; real-small+real-matched {ceiling:.3f}",
                n,
            )
    return out


def _pm(mean: float, std: float) -> str:
    return f"{mean:.3f} ± {std:.3f}"


def markdown(runs: pd.DataFrame, summary: pd.DataFrame, goals: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        "## Train on synthetic, test on real",
        "",
        f"Evaluated on the real `{meta.get('eval_split')}` split ({meta.get('n_eval')} images); ResNet-18, "
        f"{meta.get('steps')} steps x batch {meta.get('batch_size')} per arm, {meta.get('image_size')} px; "
        f"mean ± std over seeds. Chance (majority class): {meta.get('chance', 0):.3f}.",
    ]
    if meta.get("matched"):
        lines += ["", f"Real-matched set: {meta['matched']}."]
    lines += ["", "| recipe | arm | seeds | accuracy | macro F1 | training images |", "|---|---|---|---|---|---|"]
    for r in summary.itertuples(index=False):
        lines.append(
            f"| {r.recipe} | {r.arm} | {r.seeds} | {_pm(r.accuracy_mean, r.accuracy_std)} | "
            f"{_pm(r.macro_f1_mean, r.macro_f1_std)} | {r.n_train} |"
        )
    lines += ["", "### Targets", "", *[f"- {g['line']}" for g in goals], "", "### Every run", ""]
    cols = ["recipe", "seed", "arm", "accuracy", "macro_f1", "n_train", "seconds"]
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in runs[cols].itertuples(index=False)]
    return "\n".join(lines) + "\n"


def plot_bars(summary: pd.DataFrame, path: Path, title: str) -> Path:
    """Mean accuracy per arm, one bar per recipe, std over seeds as error bars."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in flow workers
    import matplotlib.pyplot as plt

    arms = list(dict.fromkeys(summary["arm"]))
    recipes = list(dict.fromkeys(summary["recipe"]))
    width = 0.8 / len(recipes)
    fig, ax = plt.subplots(figsize=(1.2 * len(arms) + 2, 3.8), dpi=100)
    x = np.arange(len(arms))
    for k, recipe in enumerate(recipes):
        s = summary[summary["recipe"] == recipe].set_index("arm").reindex(arms)
        pos = x - 0.4 + width * (k + 0.5)
        ax.bar(pos, s["accuracy_mean"], width=width, yerr=s["accuracy_std"], capsize=3, label=recipe)
        for px, v in zip(pos, s["accuracy_mean"], strict=True):
            if not np.isnan(v):
                ax.text(px, v + 0.03, f"{v:.2f}", ha="center", fontsize=7)
    ax.set_xticks(x, arms, rotation=20, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy (mean ± std over seeds)")
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_report(runs: pd.DataFrame, out: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """tstr.csv (every run), tstr_summary.csv, tstr.md, tstr.png and tstr.json under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise(runs)
    goals = targets(runs)
    atomic_write_text(out / RUNS_CSV, runs.drop(columns=["per_class_accuracy"], errors="ignore").to_csv(index=False))
    atomic_write_text(out / SUMMARY_CSV, summary.round(4).to_csv(index=False))
    atomic_write_text(out / TABLE_MD, markdown(runs, summary, goals, meta))
    plot_bars(summary, out / PLOT_PNG, f"TSTR on the real {meta.get('eval_split', 'test')} split")
    atomic_write_json(
        out / RESULT_JSON,
        {"meta": meta, "summary": summary.to_dict("records"), "targets": goals, "runs": runs.to_dict("records")},
    )
    files = {"csv": out / RUNS_CSV, "summary": out / SUMMARY_CSV, "markdown": out / TABLE_MD}
    return {"summary": summary, "targets": goals, "files": {**files, "plot": out / PLOT_PNG, "json": out / RESULT_JSON}}

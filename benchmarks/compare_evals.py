"""Side by side: the figures of several `fersynth evaluate` runs (run by hand; prints a Markdown table).

    python benchmarks/compare_evals.py NAME=EVAL_DIR [NAME=EVAL_DIR ...] [--plot CURVE.png]

Each EVAL_DIR is an `fersynth evaluate --out` folder (its eval.json). Rows are the figures issue 20's
quality-versus-compute curve reads: swap expression accuracy, SSIM to the truth over the whole face
and over the changed region (composite and plain generator), the leak table's spread, and novel identities' judge figures.
With --plot, the headline figures against training steps (log scale): the quality-versus-compute curve.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipeline.expressions import EXPRESSIONS

ROWS = [
    ("training step", "step"),
    ("swap expression accuracy (independent judge)", "expr_acc"),
    ("same, outside judge (ShuffleNet V2, sharp photos)", "expr_acc_outside"),
    ("outside judge, worst class", "expr_acc_outside_worst"),
    ("same, plain generator", "expr_acc_raw"),
    ("SSIM to truth, composite / plain generator", ("ssim_truth", "ssim_truth_raw")),
    ("changed region: SSIM composite / plain", ("ssim_changed", "ssim_changed_raw")),
    ("changed region: PSNR composite / plain (dB)", ("psnr_changed", "psnr_changed_raw")),
    ("changed region: SSIM of the unchanged source", "ssim_changed_copy_source"),
    ("unchanged region: SSIM composite / plain", ("ssim_unchanged", "ssim_unchanged_raw")),
    ("leak spread over source expressions, mean / max", ("leak_mean", "leak_max")),
    (
        "novel identities: expression accuracy (independent / outside judge)",
        ("expr_acc_novel", "expr_acc_outside_novel"),
    ),
    ("novel identities: same-face / other-face cosine", ("id_same_novel", "id_other_novel")),
    ("novel identities: identity top-1 (real photos)", ("id_top1_novel", "id_top1_photos")),
]


def figures(path: Path) -> dict[str, float]:
    raw = json.loads((path / "eval.json").read_text())
    out = {"step": raw.get("step"), **raw["metrics"]}
    spread = list(((raw.get("leak_table") or {}).get("spread_per_target") or {}).values())
    if spread:
        out["leak_mean"], out["leak_max"] = sum(spread) / len(spread), max(spread)
    per_class = [
        raw["metrics"][f"expr_acc_outside_{e}"] for e in EXPRESSIONS if f"expr_acc_outside_{e}" in raw["metrics"]
    ]
    if per_class:
        out["expr_acc_outside_worst"] = min(per_class)
    return out


def cell(fig: dict[str, float], key: str | tuple[str, ...]) -> str:
    keys = key if isinstance(key, tuple) else (key,)
    vals = [fig.get(k) for k in keys]
    return " / ".join("n/a" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v) for v in vals)


# The figures the curve plot draws against training steps.
CURVE = [
    ("swap expression accuracy", "expr_acc"),
    ("plain generator SSIM to truth", "ssim_truth_raw"),
    ("changed region SSIM, composite", "ssim_changed"),
    ("changed region SSIM, plain", "ssim_changed_raw"),
    ("leak spread, mean", "leak_mean"),
]


def plot_curve(figs: list[tuple[str, dict[str, float]]], path: Path) -> None:
    from matplotlib.figure import Figure

    pts = sorted((f["step"], name, f) for name, f in figs if f.get("step"))
    fig = Figure(figsize=(7, 4.2))
    ax = fig.add_subplot()
    steps = [p[0] for p in pts]
    for label, key in CURVE:
        ys = [f.get(key) for _, _, f in pts]
        if all(y is not None for y in ys):
            ax.plot(steps, ys, marker="o", label=label)
    ax.axhline(0.85, ls="--", lw=0.8, color="C1", label="target: plain SSIM 0.85")
    ax.set_xscale("log", base=2)
    ax.set_xticks(steps, [f"{name}\n{s:,}" for s, name, _ in pts])
    ax.set_xlabel("training steps")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", metavar="NAME=EVAL_DIR")
    ap.add_argument("--plot", type=Path, help="write the figures against training steps to this PNG")
    args = ap.parse_args()
    runs = [arg.split("=", 1) for arg in args.runs]
    if any(len(r) != 2 for r in runs):
        ap.error("each run is NAME=EVAL_DIR")
    figs = [(name, figures(Path(d))) for name, d in runs]
    print("| figure | " + " | ".join(name for name, _ in figs) + " |")
    print("|---" * (len(figs) + 1) + "|")
    for label, key in ROWS:
        print(f"| {label} | " + " | ".join(cell(f, key) for _, f in figs) + " |")
    if args.plot:
        plot_curve(figs, args.plot)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()

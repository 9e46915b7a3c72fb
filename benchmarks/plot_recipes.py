"""Compare trained recipes from their `fersynth evaluate` results (run by hand; writes one PNG).

    python benchmarks/plot_recipes.py OUT.png NAME=runs/a/eval/eval.json NAME=runs/b/eval/eval.json ...

Left: expression accuracy of swaps per target class (independent judge). Right: SSIM of swaps to
the true image, with the copy-the-source reference as a dashed line, and the judge-free expression
transfer (1 = renders reach the truth, -1 = they copy the source's expression). Issue 3's floors
are drawn where they apply.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from pipeline.expressions import EXPRESSIONS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("runs", nargs="+", help="NAME=path/to/eval.json")
    args = ap.parse_args()
    runs = []
    for spec in args.runs:
        name, sep, path = spec.partition("=")
        if not sep:
            ap.error(f"expected NAME=path/to/eval.json, got {spec!r}")
        runs.append((name, json.loads(Path(path).read_text())["metrics"]))

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [3, 2]})
    classes = [c for c in EXPRESSIONS if any(f"expr_acc_{c}" in m for _, m in runs)]
    width = 0.8 / len(runs)
    x = np.arange(len(classes) + 1)
    for i, (name, m) in enumerate(runs):
        vals = [m.get(f"expr_acc_{c}", np.nan) for c in classes] + [m["expr_acc"]]
        ax1.bar(x + (i - (len(runs) - 1) / 2) * width, vals, width, label=name)
    ax1.axhline(0.90, color="k", lw=0.8, ls=":", label="floor 0.90 (overall accuracy)")
    ax1.set_xticks(x, [*classes, "ALL"])
    ax1.set_ylim(0, 1.05)
    ax1.set_ylabel("expression accuracy of swaps")
    ax1.legend(fontsize=8, loc="lower left", bbox_to_anchor=(0.0, 1.01), ncol=3)

    names = [n for n, _ in runs]
    pos = np.arange(len(runs))
    ax2.bar(pos - 0.2, [m.get("ssim_truth", np.nan) for _, m in runs], 0.4, color="tab:gray", label="SSIM to truth")
    ax2.bar(
        pos + 0.2,
        [m.get("expression_transfer", np.nan) for _, m in runs],
        0.4,
        color="tab:green",
        label="expression transfer",
    )
    copy = [m.get("ssim_truth_copy_source") for _, m in runs if "ssim_truth_copy_source" in m]
    if copy:
        ax2.axhline(copy[0], color="grey", lw=0.8, ls="--", label=f"SSIM of the unchanged source {copy[0]:.2f}")
    ax2.axhline(0.80, color="k", lw=0.8, ls=":", label="SSIM floor 0.80")
    ax2.set_xticks(pos, names, fontsize=8, rotation=20, ha="right")
    ax2.set_ylim(min(0.0, *[m.get("expression_transfer", 0.0) for _, m in runs]) - 0.05, 1.4)
    ax2.axhline(0.0, color="k", lw=0.5)
    ax2.legend(fontsize=8, loc="upper left", ncol=2)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

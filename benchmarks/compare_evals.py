"""Side by side: the figures of several `fersynth evaluate` runs (run by hand; prints a Markdown table).

    python benchmarks/compare_evals.py NAME=EVAL_DIR [NAME=EVAL_DIR ...]

Each EVAL_DIR is an `fersynth evaluate --out` folder (its eval.json). Rows are the figures issue 20's
quality-versus-compute curve reads: swap expression accuracy, SSIM to the truth over the whole face
and over the changed region (composite and plain generator), the leak table's spread, and novel identities' judge figures.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROWS = [
    ("training step", "step"),
    ("swap expression accuracy (independent judge)", "expr_acc"),
    ("same, plain generator", "expr_acc_raw"),
    ("SSIM to truth, composite / plain generator", ("ssim_truth", "ssim_truth_raw")),
    ("changed region: SSIM composite / plain", ("ssim_changed", "ssim_changed_raw")),
    ("changed region: PSNR composite / plain (dB)", ("psnr_changed", "psnr_changed_raw")),
    ("changed region: SSIM of the unchanged source", "ssim_changed_copy_source"),
    ("unchanged region: SSIM composite / plain", ("ssim_unchanged", "ssim_unchanged_raw")),
    ("leak spread over source expressions, mean / max", ("leak_mean", "leak_max")),
    ("novel identities: expression accuracy", "expr_acc_novel"),
    ("novel identities: same-face / other-face cosine", ("id_same_novel", "id_other_novel")),
    ("novel identities: identity top-1 (real photos)", ("id_top1_novel", "id_top1_photos")),
]


def figures(path: Path) -> dict[str, float]:
    raw = json.loads((path / "eval.json").read_text())
    out = {"step": raw.get("step"), **raw["metrics"]}
    spread = list(((raw.get("leak_table") or {}).get("spread_per_target") or {}).values())
    if spread:
        out["leak_mean"], out["leak_max"] = sum(spread) / len(spread), max(spread)
    return out


def cell(fig: dict[str, float], key: str | tuple[str, ...]) -> str:
    keys = key if isinstance(key, tuple) else (key,)
    vals = [fig.get(k) for k in keys]
    return " / ".join("n/a" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v) for v in vals)


def main() -> None:
    runs = [arg.split("=", 1) for arg in sys.argv[1:]]
    if not runs or any(len(r) != 2 for r in runs):
        sys.exit("usage: compare_evals.py NAME=EVAL_DIR [NAME=EVAL_DIR ...]")
    figs = [(name, figures(Path(d))) for name, d in runs]
    print("| figure | " + " | ".join(name for name, _ in figs) + " |")
    print("|---" * (len(figs) + 1) + "|")
    for label, key in ROWS:
        print(f"| {label} | " + " | ".join(cell(f, key) for _, f in figs) + " |")


if __name__ == "__main__":
    main()

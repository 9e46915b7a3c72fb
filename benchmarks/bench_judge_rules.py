"""How stable is each expression-check rule across judge panels? (run by hand; re-scores saved panels, no training)

    python benchmarks/bench_judge_rules.py SAVE_DIR DATASET_DIR [DATASET_DIR ...] [--keep 0.9 0.95 0.99 1.0]

SAVE_DIR holds `bench_judges.py --save` output: for every panel, its probabilities on the real
validation split and on each dataset's renders. For each `keep` (the share of correctly classified
real validation images of a class that its threshold lets pass; generation calibrates at 0.95),
the thresholds are recalibrated per class on that panel's validation
probabilities and the renders re-checked with generation's rule (argmax is the target and
p(target) >= its class's threshold). Prints, per dataset and keep, every panel's pass rate and the
verdict of the gates the expression check feeds, then the spread over panels. keep 1.0 is "argmax
only" (the lowest correct probability).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from bench_judges import _verdict  # the same verdict bench_judges prints

from pipeline.calibration import calibrate_expression_threshold, calibrate_expression_thresholds
from pipeline.config import QualityConfig
from pipeline.expressions import EXPRESSIONS
from pipeline.quality.gates import per_image_flags


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("save", type=Path)
    ap.add_argument("datasets", type=Path, nargs="+")
    ap.add_argument("--keep", type=float, nargs="+", default=[0.9, 0.95, 0.99, 1.0])
    args = ap.parse_args()
    for folder in args.datasets:
        df = pd.read_parquet(folder / "manifest")
        panels = sorted(args.save.glob(f"{folder.name}-*.npz"))
        if not panels:
            raise SystemExit(f"{args.save}: no saved panel for dataset {folder.name!r}")
        for keep in args.keep:
            runs = [_check(np.load(f), df, keep) for f in panels]
            rates = [r for r, _ in runs]
            print(
                f"{folder.name} keep={keep}: {len(runs)} panels | pass "
                + " ".join(f"{r:.3f}" for r in rates)
                + f" (spread {max(rates) - min(rates):.3f}) | expression gates: {', '.join(v for _, v in runs)}",
                flush=True,
            )


def _check(saved, df: pd.DataFrame, keep: float) -> tuple[float, str]:
    """(pass rate, verdict) of one panel with per-class thresholds keeping `keep` of real faces."""
    p_val, y = saved["p_val"], saved["val_labels"]
    right = p_val.argmax(1) == y
    p_t = p_val[np.arange(len(y)), y]
    pooled = calibrate_expression_threshold(p_t, right, keep)
    own = calibrate_expression_thresholds(p_t, right, y, EXPRESSIONS, keep)
    q = QualityConfig(expression_threshold=pooled, expression_thresholds=own)
    p, target = saved["p_renders"], saved["target"]
    scored = pd.DataFrame(
        {
            "expression": df["expression"].to_numpy(),
            "expression_idx": target,
            "expression_pred": p.argmax(1),
            "expression_p_target": p[np.arange(len(target)), target],
            "identity_cosine": 1.0,
        }
    )
    passed = per_image_flags(scored, q)["expression_pass"]
    return float(passed.mean()), _verdict(df, passed, q)


if __name__ == "__main__":
    main()

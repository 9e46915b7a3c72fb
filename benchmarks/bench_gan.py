"""The GAN's ground-truth figures against issue 3's floors (run by hand; prints figures).

    python benchmarks/bench_gan.py [CHECKPOINT]   # default: runs/photo-sphere-64/checkpoints/final.pt

Scores every (test identity, target expression) swap with `pipeline.evaluate.evaluate_checkpoint`
(independent judges, exact procedural truth) and prints each figure beside its floor, plus the
GAN stages' training time the checkpoint recorded (peak memory: run training under
`/usr/bin/time -v`). Needs the checkpoint's dataset
(`fersynth data make --config configs/photo-sphere-64.yaml --out data/procedural-64`). A release checkpoint
(`checkpoints/photo-sphere-64.pt`) works too: it keeps the evaluation judges.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# Issue 3's floors for the default CPU recipe, on held-out test identities.
FLOORS = {"expr_acc": 0.90, "id_top1": 0.90, "ssim_truth": 0.80}


def main() -> None:
    from pipeline.evaluate import evaluate_checkpoint
    from pipeline.expressions import EXPRESSIONS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", nargs="?", type=Path, default=Path("runs/photo-sphere-64/checkpoints/final.pt"))
    ap.add_argument("--out", type=Path, default=None, help="where eval.json / swap_grid.png go")
    ap.add_argument(
        "--set", dest="sets", action="append", default=[], help="config override, e.g. generate.composite=mask"
    )
    args = ap.parse_args()
    result = evaluate_checkpoint(args.checkpoint, out_dir=args.out, overrides=args.sets or None)
    m = result["metrics"]
    print(
        f"checkpoint {args.checkpoint} (step {result['step']}), {m['n_test_identities']} test identities, {m['n_swaps']} swaps"
    )
    for key, floor in FLOORS.items():
        verdict = "meets" if m[key] >= floor else "BELOW"
        print(f"  {key:<12} {m[key]:.3f}   floor {floor:.2f}   {verdict}")
    for key in (
        "id_cosine",
        "psnr_truth",
        "recon_ssim",
        "ssim_truth_copy_source",
        "expression_transfer",  # 1: renders reach the truth, -1: they copy the source's expression
        "expression_spread_ratio",
        "expr_acc_raw",  # swaps drawn over the source: the plain RGB, what a novel identity (no photo) gets
        "ssim_truth_raw",
        "mask_open_changed",  # swaps drawn over the source: mask over the pixels the truth changes (~1 is decisive)
        "mask_open_kept",  # ... and over the rest (~0 is decisive)
    ):
        if key in m:
            print(f"  {key:<24} {m[key]:.3f}")
    _print_regions(m)
    _print_leakage(result["leak_table"])
    per_class = {c: round(m[f"expr_acc_{c}"], 2) for c in EXPRESSIONS if f"expr_acc_{c}" in m}
    print(f"  expression accuracy per class: {per_class}")
    for key in sorted(k for k in m if k.startswith("expr_acc_intensity_")):
        level = key.removeprefix("expr_acc_intensity_")
        ssim = m.get(f"ssim_truth_intensity_{level}", float("nan"))
        print(f"  swaps to intensity {level} (expressive classes): expression {m[key]:.3f}, SSIM to truth {ssim:.3f}")
    print(
        f"  judges on real test images: expression {m['judge_expr_acc_real']:.3f}, identity {m['judge_id_top1_real']:.3f}"
    )
    for w in result["warnings"]:
        print(f"  WARNING: {w}")
    secs = result["stage_seconds"]
    if secs:
        print(f"  GAN stage seconds (judges and finalisation not included): {secs}, total {sum(secs.values())} s")
    print(f"  grid: {result['grid']}")


def _print_regions(m: dict) -> None:
    """L1 / PSNR / SSIM to truth over the pixels the expression changes and the rest, side by side."""
    if "l1_changed" not in m:
        return
    print(f"  fidelity by region (changed: {m['changed_share']:.1%} of pixels; L1 0-1 scale, PSNR dB):")
    print(
        f"    {'':<16}"
        + "".join(f"{h:>11}" for h in ("L1 chg", "PSNR chg", "SSIM chg", "L1 rest", "PSNR rest", "SSIM rest"))
    )
    for label, suffix in (
        ("composite", ""),
        ("plain generator", "_raw"),
        ("copy source", "_copy_source"),
    ):
        if f"l1_changed{suffix}" in m:
            keys = [f"{k}_{r}{suffix}" for r in ("changed", "unchanged") for k in ("l1", "psnr", "ssim")]
            print(f"    {label:<16}" + "".join(f"{m[k]:>11.3f}" for k in keys))


def _print_leakage(leak: dict) -> None:
    """Swap expression accuracy by source (rows) x target (columns) expression, and its spread."""
    names = leak["expressions"]
    print("  expression accuracy by source (rows) x target (columns):")
    print(f"    {'':<9}" + "".join(f"{n[:8]:>9}" for n in names))
    for name, row in zip(names, leak["accuracy"], strict=True):
        print(f"    {name:<9}" + "".join(f"{'-' if v is None else f'{v:.2f}':>9}" for v in row))
    spread = leak["spread_per_target"]
    print(f"    {'spread':<9}" + "".join(f"{'-' if spread[n] is None else f'{spread[n]:.2f}':>9}" for n in names))
    s = leak["summary"]
    print(
        f"  leakage: spread of accuracy across sources, mean {s['leak_spread_mean']:.3f}, max {s['leak_spread_max']:.3f}"
    )


if __name__ == "__main__":
    main()

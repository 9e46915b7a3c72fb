"""Quality against minutes of training, one line per design (run by hand; writes one PNG).

    python benchmarks/plot_compute_curve.py docs/experiments/quality_vs_minutes.csv \
        --add "design J" 12 runs/eval-j12 --out docs/images/quality_vs_minutes.png

The CSV holds one measured point per row (design, minutes of training on 2 CPU cores, and the test
split's figures). `--add DESIGN MINUTES EVAL_DIR` reads a `fersynth evaluate --out` folder's
eval.json into the CSV (replacing that design's point at those minutes) before plotting, so every
figure in the CSV came from an evaluation or, for points measured outside this project, from the
page that cites them. Left: SSIM over the pixels the expression changes; right: the outside judge.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

FIELDS = ["design", "minutes", "ssim_changed", "psnr_changed", "ssim_whole", "outside_judge", "source"]


def read_points(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def point_from_eval(design: str, minutes: float, eval_dir: Path) -> dict[str, str]:
    m = json.loads((eval_dir / "eval.json").read_text())["metrics"]
    return {
        "design": design,
        "minutes": f"{minutes:g}",
        "ssim_changed": f"{m['ssim_changed']:.3f}",
        "psnr_changed": f"{m['psnr_changed']:.1f}",
        "ssim_whole": f"{m['ssim_truth']:.3f}",
        "outside_judge": f"{m['expr_acc_outside']:.3f}" if "expr_acc_outside" in m else "",
        "source": f"fersynth evaluate ({eval_dir.name})",
    }


def point_key(row: dict[str, str]) -> tuple[str, float]:
    """A point is one design at one number of minutes: the CSV's order and identity."""
    return row["design"], float(row["minutes"])


def write_points(path: Path, rows: list[dict[str, str]]) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, FIELDS)
        w.writeheader()
        w.writerows(sorted(rows, key=point_key))
    tmp.replace(path)


def plot(rows: list[dict[str, str]], out: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.8))
    panels = [
        ("ssim_changed", "SSIM to truth, changed region", 0.85),
        ("outside_judge", "outside judge reads the target", 0.98),
    ]
    designs = list(dict.fromkeys(r["design"] for r in rows))
    for i, (key, title, target) in enumerate(panels):
        ax = fig.add_subplot(1, 2, i + 1)
        for colour, design in enumerate(designs):
            pts = sorted((float(r["minutes"]), float(r[key])) for r in rows if r["design"] == design and r[key])
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", color=f"C{colour}", label=design)
        ax.axhline(target, ls="--", lw=0.8, color="grey", label=f"target {target}")
        ax.set_xlabel("minutes of training, 2 CPU cores")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("points", type=Path, help="CSV of measured points")
    ap.add_argument("--add", nargs=3, action="append", default=[], metavar=("DESIGN", "MINUTES", "EVAL_DIR"))
    ap.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = ap.parse_args()
    rows = read_points(args.points)
    for design, minutes, eval_dir in args.add:
        new = point_from_eval(design, float(minutes), Path(eval_dir))
        rows = [r for r in rows if point_key(r) != point_key(new)] + [new]
    if args.add:
        write_points(args.points, rows)
    plot(rows, args.out)
    for r in sorted(rows, key=point_key):
        print(", ".join(f"{k}={r[k]}" for k in FIELDS))
    print(f"plot: {args.out}")


if __name__ == "__main__":
    main()

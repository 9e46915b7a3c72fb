"""How well the outside judge reads real photos, per class, under a training recipe (run by hand).

    python benchmarks/bench_outside_judge.py --steps 1500                 # the recipe in the code
    python benchmarks/bench_outside_judge.py --steps 1500 --uniform       # batches drawn as the data falls

The judge's reading of the real photos a swap is drawn toward (each class at its top intensity) is
what a render identical to its truth scores: a judge that misreads real neutral faces cannot tell a
faithful neutral render from a failed one. Prints, for the val and test splits, the accuracy
over every real photo, over the top-intensity ones, and per class at top intensity with the classes
each was read as. Choose on val; the judge `fersynth evaluate` uses is cached by its recipe.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    import torch

    from pipeline.core.data import load_split
    from pipeline.expressions import EXPRESSIONS
    from pipeline.quality.outside_judge import RECIPE, train_outside_judge

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("data/procedural-64"))
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--uniform", action="store_true", help="batches drawn over images as version 1 drew them")
    args = ap.parse_args()
    device = torch.device("cpu")
    train = load_split(args.data, 64, "train")
    recipe = {**RECIPE, "balanced": not args.uniform}
    t0 = time.time()
    judge = train_outside_judge(train, len(EXPRESSIONS), device, args.steps, recipe=recipe)
    print(f"recipe {recipe}, {args.steps} steps: trained in {time.time() - t0:.0f} s")
    for split in ("val", "test"):
        data = load_split(args.data, 64, split)
        with torch.no_grad():
            pred = torch.cat(
                [
                    judge(data.batch(torch.arange(s, min(s + 256, data.n)), 64, 1.0, device)).argmax(1)
                    for s in range(0, data.n, 256)
                ]
            )
        y = data.labels
        top = {int(c): int(data.intensity_code[y == c].max()) for c in y.unique()}
        is_top = torch.tensor([top[int(c)] == int(i) for c, i in zip(y, data.intensity_code, strict=True)])
        hit = pred == y
        print(f"{split}: all {hit.float().mean():.3f}, top intensity {hit[is_top].float().mean():.3f}")
        for c, name in enumerate(EXPRESSIONS):
            rows = (y == c) & is_top
            read_as = torch.bincount(pred[rows], minlength=len(EXPRESSIONS)).tolist()
            print(f"  {name:9s} {hit[rows].float().mean():.3f} of {int(rows.sum())}, read as {read_as}")


if __name__ == "__main__":
    main()

"""Throughput (images/s) of each quality check on CPU with small synthetic inputs.

    .venv/bin/python benchmarks/bench_quality.py [--n 16] [--size 64] [--threads 2]

Weights come from the product's lookup (`fersynth weights` shows where); a check whose weights are
not found locally is skipped. The expression classifier is a small stand-in CNN of a plausible size (the
project's own classifier lives in models.judges), so its figure is an order of magnitude only.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from pipeline.quality.expression import expression_scores
from pipeline.quality.facenet import FaceIdentityScorer
from pipeline.quality.fid import InceptionFeatures, extract_features, fid_from_features
from pipeline.quality.ssim import ssim_batch
from pipeline.weights import find_weight


def _rate(fn: Callable[[], object], n: int, repeats: int = 2) -> float:
    fn()  # warm-up: first calls allocate and pick kernels
    best = min(_timed(fn) for _ in range(repeats))
    return n / best


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _classifier() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, 2, 1), nn.ReLU(), nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(),
        nn.Conv2d(64, 128, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 7),
    )  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=16, help="images per check")
    ap.add_argument("--size", type=int, default=64, help="render side in pixels")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 256, (args.n, 3, args.size, args.size), dtype=torch.uint8, generator=gen)
    print(f"CPU, {args.threads} threads, {args.n} images of {args.size}x{args.size}")

    rows: list[tuple[str, float]] = []
    fw = find_weight("facenet").path
    if fw is not None:
        aligned = FaceIdentityScorer.from_weights(fw, detect=False, device="cpu", batch_size=16)
        rows.append(("FaceNet embed (aligned, resize to 160)", _rate(lambda: aligned.embed(imgs), args.n)))
        detect = FaceIdentityScorer(aligned.model, detect=True, device="cpu", batch_size=16)
        big = torch.nn.functional.interpolate(imgs.float(), size=256).to(torch.uint8)
        rows.append(("FaceNet embed (MTCNN detect, 256 px, no faces)", _rate(lambda: detect.embed(big), args.n)))
    clf = _classifier()
    target = np.zeros(args.n, dtype=int)
    rows.append(("expression classifier (small CNN)", _rate(lambda: expression_scores(clf, imgs, target), args.n)))
    hwc = imgs.permute(0, 2, 3, 1).numpy()
    other = np.ascontiguousarray(hwc[::-1])
    rows.append(("SSIM (skimage, Gaussian 11)", _rate(lambda: ssim_batch(hwc, other), args.n)))
    iw = find_weight("fid").path
    if iw is not None:
        inc = InceptionFeatures(iw)
        rows.append(("Inception features (299 px)", _rate(lambda: extract_features(inc, imgs, 16, "cpu"), args.n)))
        f = torch.randn(args.n, 2048, dtype=torch.float64, generator=gen)
        for method in ("torchmetrics", "low_rank"):
            t = _timed(lambda m=method: fid_from_features(f, f + 0.1, method=m))
            print(f"{'FID compute, 2048-d, ' + method:50s} {t:8.3f} s per call")
    for name, r in rows:
        print(f"{name:50s} {r:8.1f} images/s")


if __name__ == "__main__":
    main()

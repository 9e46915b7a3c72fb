"""How precisely a checkpoint's expression codes name their expression and intensity.

A swap is trained on the expression code of a target image; if codes of one (expression, intensity)
scatter, the generator is handed an ambiguous target. Prints, over the validation split: the
within-group variance of the codes as a share of the between-group variance, and how often the
nearest group centroid is the image's own (expression and intensity, and expression alone).

    python benchmarks/code_precision.py runs/photo-64/checkpoints/final.pt
"""

from __future__ import annotations

import argparse
import json

import torch

from pipeline.core.checkpoint import load_checkpoint
from pipeline.core.data import load_split
from pipeline.core.legacy import checkpoint_config
from pipeline.core.networks import build_networks


@torch.no_grad()
def code_precision(checkpoint: str, split: str = "val", max_images: int = 1500) -> dict[str, float]:
    ckpt = load_checkpoint(checkpoint, map_location="cpu")
    cfg = checkpoint_config(ckpt, checkpoint)
    nets = build_networks(cfg, len(json.loads(ckpt["identity_names"])), None)
    for k, m in nets.modules().items():
        m.load_state_dict(ckpt["nets"][k])
    data = load_split(cfg.data.root, cfg.model.max_resolution, split, cfg.data.cache_dir)
    idx = torch.arange(min(data.n, max_images))
    nets.encoder.eval()
    res, cpu = cfg.model.max_resolution, torch.device("cpu")
    codes = torch.cat([nets.encoder(data.batch(idx[i : i + 100], res, 1.0, cpu))[1] for i in range(0, len(idx), 100)])
    group = data.labels[idx] * 1000 + data.intensity_code[idx]  # (expression, intensity in hundredths)
    names = group.unique()
    cent = torch.stack([codes[group == g].mean(0) for g in names])
    within = torch.stack([(codes[group == g] - cent[i]).pow(2).sum(1).mean() for i, g in enumerate(names)]).mean()
    between = (cent - cent.mean(0)).pow(2).sum(1).mean()
    nearest = names[torch.cdist(codes, cent).argmin(1)]
    return {
        "images": len(idx),
        "groups": len(names),
        "within_over_between_variance": float(within / between),
        "nearest_centroid_expression_and_intensity": float((nearest == group).float().mean()),
        "nearest_centroid_expression": float((nearest // 1000 == group // 1000).float().mean()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--split", default="val")
    args = ap.parse_args()
    for k, v in code_precision(args.checkpoint, args.split).items():
        print(f"{k}: {v:.3f}" if isinstance(v, float) else f"{k}: {v}")


if __name__ == "__main__":
    main()

"""Why neutral swaps fail: leak from the source, or the neutral rendering itself? (run by hand)

    python benchmarks/probe_neutral.py [CHECKPOINT]   # default: runs/cpu-64/checkpoints/final.pt

Renders every test source (neutral and each expression at its top intensity) with several choices
of neutral expression code and prints how the independent judge reads them, overall and per source
expression. If neutral fails as often from neutral sources as from expressive ones, and for every
choice of code, the source's expression is not what leaks in.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    import torch

    from pipeline.core.codes import encode_all
    from pipeline.core.data import load_split
    from pipeline.core.trained import load_trained
    from pipeline.expressions import EXPRESSIONS
    from pipeline.judges import load_eval_judges

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", nargs="?", type=Path, default=Path("runs/cpu-64/checkpoints/final.pt"))
    args = ap.parse_args()
    cfg, nets, ckpt = load_trained(args.checkpoint, None)
    dev = next(nets.generator.parameters()).device
    full, n_cls = cfg.model.max_resolution, cfg.model.num_classes
    train = load_split(cfg.data.root, full, "train", cfg.data.cache_dir)
    test = load_split(cfg.data.root, full, "test", cfg.data.cache_dir)
    clf, _ = load_eval_judges(cfg, ckpt, dev)
    with torch.no_grad():
        _, w_exp = encode_all(nets.encoder, train, dev)
    neutral = w_exp[train.labels == 0]
    codes = {
        "centroid (what generation uses)": ckpt["codes"]["exp_centroids"][0].float().to(dev),
        "medoid": neutral[(neutral - neutral.mean(0)).norm(dim=1).argmin()],
        "median": neutral.median(0).values,
    }
    top = {c: int(test.intensity_code[test.labels == c].max()) for c in range(n_cls) if (test.labels == c).any()}
    src = torch.tensor([i for i in range(test.n) if top.get(int(test.labels[i])) == int(test.intensity_code[i])])
    names = EXPRESSIONS[:n_cls]
    with torch.no_grad():
        w_id = torch.cat(
            [nets.encoder(test.batch(src[s : s + 128], full, 1.0, dev))[0] for s in range(0, len(src), 128)]
        )
        for name, code in codes.items():
            pred = torch.cat(
                [
                    clf(nets.generator_ema(w, code.expand(len(w), -1), full, 1.0).clamp(-1, 1)).argmax(1).cpu()
                    for w in w_id.split(128)
                ]
            )
            counts = torch.bincount(pred, minlength=n_cls)
            read = ", ".join(f"{names[c]} {int(counts[c]) / len(pred):.2f}" for c in range(n_cls) if counts[c])
            print(f"neutral code = {name}: judged {read}  ({len(pred)} renders)")
            if name.startswith("centroid"):
                for c in range(n_cls):
                    sel = test.labels[src] == c
                    if sel.any():
                        print(f"    from {names[c]:<9} sources: neutral {float((pred[sel] == 0).float().mean()):.2f}")


if __name__ == "__main__":
    main()

"""Does the usefulness gate tell useful data from useless data? (run by hand; prints one line per arm and seed)

    python benchmarks/bench_usefulness.py CHECKPOINT DATASET_DIR [--seeds 0 1 2] [--arms renders perfect shuffled sources]
        [--recognisers N]

Runs the gate exactly as generation does (`quality.usefulness_*` of the checkpoint's config, the
real validation split) on training sets of the same size and label mix:
- `renders`: the dataset's passing renders (the gate's own verdict on this dataset);
- `perfect renderer`: for the same rows, the real image of the same identity, expression and
  intensity (`pipeline.downstream.matched`): what a renderer with no domain gap would hand over;
- `shuffled labels`: the same renders with their expression labels permuted (data that teaches nothing);
- `source photos`: the photos the renders started from (manifest `source_image`), with the renders'
  target labels: what the renders would teach if the generator changed nothing (a render drawn over
  a photo keeps its pixels outside the changed region, so this tells the drawn expression's share).
A gate worth having passes the second and fails the third, whatever it says of the first.
Each line prints the gate's mean ratio and each recogniser pair's. Needs the checkpoint's training data;
about 1 min per recogniser pair on 2 cores at the default settings.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from manifests.labels import read_labels
from pipeline.core.checkpoint import load_checkpoint
from pipeline.core.legacy import checkpoint_config
from pipeline.downstream.matched import describe, match_real
from pipeline.quality.usefulness import UsefulnessSettings, measure_usefulness, passing_sample

ARMS = {"renders": "renders", "perfect": "perfect renderer", "shuffled": "shuffled labels", "sources": "source photos"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("dataset", type=Path, help="a generated dataset folder (staged or published)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    ap.add_argument(
        "--recognisers", type=int, default=None, help="recogniser pairs per gate (default: the checkpoint's config)"
    )
    args = ap.parse_args()

    cfg = checkpoint_config(load_checkpoint(args.checkpoint), str(args.checkpoint))
    q, root = cfg.quality, Path(cfg.data.root)
    manifest = pd.read_parquet(args.dataset / "manifest")
    labels, _ = read_labels(root)
    for seed in args.seeds:
        s = UsefulnessSettings.from_quality(q, seed)
        if args.recognisers is not None:
            s = replace(s, recognisers=args.recognisers)
        renders = passing_sample(manifest, s.max_images, seed)
        matched = match_real(renders, labels, eval_split=s.eval_split)
        perfect = pd.DataFrame(
            {
                "sample_id": np.arange(len(matched.frame)),
                "file_name": matched.frame["path"].to_numpy(),
                "expression_index": matched.frame["expression_index"].to_numpy(),
                "all_pass": True,
            }
        )
        rng = np.random.default_rng(seed)
        shuffled = renders.assign(expression_index=rng.permutation(renders["expression_index"].to_numpy()))
        print(f"{args.dataset} seed {seed}: {len(renders)} passing renders; perfect renderer: {describe(matched)}")
        from_photo = renders[renders["source_image"].notna()] if "source_image" in renders else renders.iloc[:0]
        sources = from_photo.assign(file_name=from_photo["source_image"])
        sets = {
            "renders": (renders, args.dataset),
            "perfect": (perfect, root),
            "shuffled": (shuffled, args.dataset),
            "sources": (sources, root),
        }
        for arm in args.arms:
            rows, images_root = sets[arm]
            start = time.perf_counter()
            r = measure_usefulness(images_root, rows, root, cfg.model.max_resolution, s, cfg.data.cache_dir)
            verdict = "pass" if r.ratio >= q.usefulness_floor else "FAIL"
            print(
                f"  {ARMS[arm]:>16}: ratio {r.ratio:.3f} ({verdict} at floor {q.usefulness_floor}) | real-val accuracy "
                f"{r.accuracy_synthetic:.3f} trained on {r.n_train} vs {r.accuracy_real:.3f} on as many real "
                f"training images | chance {r.chance:.3f} | per recogniser "
                f"{' '.join(f'{x:.3f}' for x in r.ratios)} | {time.perf_counter() - start:.0f} s",
                flush=True,
            )


if __name__ == "__main__":
    main()

"""Seconds per GAN training step at each resolution of a recipe (run by hand; prints figures).

    python benchmarks/bench_train.py --config configs/photo-sphere-64.yaml --data data/procedural-64 [--steps 4]

Needs the recipe's dataset (`fersynth data make --config ... --out ...`). Uses a throw-away run
folder; the judges are trained for only a few steps, which does not change the step cost.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from pipeline.config import load_config
from pipeline.train.loop import Trainer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/photo-sphere-64.yaml")
    ap.add_argument("--data", default="data/procedural-64")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--set", action="append", default=[], help="extra config overrides")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(
            args.config, [f"data.root={args.data}", f"train.out_dir={tmp}", "train.judge_steps=5", *args.set]
        )
        trainer = Trainer(cfg)
        trainer.run_judges()
        print(f"device {trainer.device}, torch threads {torch.get_num_threads()}, backbone {cfg.model.backbone}")
        for stage in cfg.train.stages:
            trainer.stage_idx = cfg.train.stages.index(stage)  # batch size of that stage
            trainer.train_step(stage.resolution, 1.0)  # warm-up
            start = time.perf_counter()
            for _ in range(args.steps):
                trainer.train_step(stage.resolution, 1.0)
            per = (time.perf_counter() - start) / args.steps
            batch = stage.batch_size or cfg.train.batch_size
            print(f"{stage.resolution:>4} px  batch {batch:>3}  {per:.3f} s/step  {batch / per:.1f} img/s")


if __name__ == "__main__":
    main()

"""Config overrides the generation tests share: tiny runs that finish in seconds."""

from __future__ import annotations

# Small shards so a 42-image sweep has several; FID/KID on a handful of images (Inception is slow on CPU).
FAST_GENERATE = [
    "generate.shard_size=10",
    "generate.batch_size=4",
    "generate.fid_max_images=8",
    "generate.report_max_images=16",
    "quality.kid_subsets=10",
]
# The usefulness gate's recognisers, a few steps on a few images: the gate runs, its verdict is cheap.
FAST_USEFULNESS = [
    "quality.usefulness_steps=3",
    "quality.usefulness_batch_size=8",
    "quality.usefulness_max_eval_images=32",
]
# The tiny GAN cannot pass real gates; these let a run publish so what follows publishing is tested.
LENIENT_GATES = [
    "quality.usefulness_floor=0.0",
    "quality.embedder_identity_threshold=-1.0",
    "quality.ssim_floor=-1.0",
    "quality.kid_ceiling=100.0",
    "quality.fid_ceiling=1000000.0",
    "quality.pass_rate_floor=0.0",
]

"""Generation throughput and memory: end to end per shard vs the same generator + checks without I/O.

    OMP_NUM_THREADS=1 python benchmarks/bench_generate.py --sizes 1000 10000 [--checkpoint CKPT]

For each size N (images), in a fresh subprocess so peak RSS is that run's own:
- end to end: `render_shard` over every shard (render, PNG encode + atomic write, sha256, expression /
  identity / SSIM-vs-truth checks, Parquet part) -> images/s and peak RSS;
- no I/O: the same `render_items` + `check_batch` on the same plan, nothing written -> images/s.
Without --checkpoint a tiny model (configs/tiny.yaml) is trained first, in seconds. The plan mixes
the tiny data's real train identities with novel ones so N can grow; SSIM runs for the real ones.
FID/KID and the report are dataset-level and timed separately by --with-finish (Inception on CPU is
~4 images/s, so they are capped by generate.fid_max_images).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def tiny_checkpoint(work: Path) -> Path:
    from pipeline.config import load_config
    from pipeline.procedural.dataset import make_dataset
    from pipeline.train.loop import Trainer

    data = work / "data"
    cfg = load_config(REPO / "configs" / "tiny.yaml", [f"data.root={data}", f"train.out_dir={work / 'run'}"])
    make_dataset(cfg.procedural, data, workers=1)
    return Trainer(cfg).train()


def one_size(checkpoint: Path, n: int, out: Path, with_finish: bool, batch_size: int) -> dict[str, float]:
    from pipeline.generate import finish, load_plan, prepare, render_shard
    from pipeline.generate.checks import check_batch
    from pipeline.generate.context import get_context
    from pipeline.generate.rendering import render_items

    n_real = 6  # real train identities (the tiny data has six), the rest novel so N can grow
    sets = [
        "generate.identity_sources=[real, novel]",
        f"generate.max_real_identities={n_real}",
        f"generate.n_novel={max(1, math.ceil(n / 7) - n_real)}",
        "generate.shard_size=1000",
        f"generate.batch_size={batch_size}",
        "generate.fid_max_images=64",
        "generate.report_max_images=256",
        "quality.kid_subsets=20",
    ]
    t0 = time.perf_counter()
    prep = prepare(None, checkpoint, out, name="bench", overrides=sets)
    plan = load_plan(prep.staging)
    t_plan = time.perf_counter() - t0

    # No I/O first: also warms the context (models, data, prototypes, truth cache) for a fair comparison.
    ctx = get_context(plan)
    t0 = time.perf_counter()
    for start in range(0, len(plan.items), batch_size):
        batch = plan.items[start : start + batch_size]
        check_batch(ctx, plan, batch, render_items(ctx, plan, batch))
    t_noio = time.perf_counter() - t0

    t0 = time.perf_counter()
    for i in range(plan.n_shards):
        render_shard(prep.staging, i, "bench", plan=plan)
    t_e2e = time.perf_counter() - t0
    res = {
        "n_images": len(plan.items),
        "n_shards": plan.n_shards,
        "plan_s": round(t_plan, 2),
        "no_io_img_s": round(len(plan.items) / t_noio, 1),
        "end_to_end_img_s": round(len(plan.items) / t_e2e, 1),
        "io_overhead_pct": round(100 * (t_e2e - t_noio) / t_noio, 1),
    }
    if with_finish:
        t0 = time.perf_counter()
        finish(None, prep.staging, "bench")
        res["finish_s"] = round(time.perf_counter() - t0, 2)
    # ru_maxrss is KiB on Linux: the whole process's peak, hence one subprocess per size.
    res["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--checkpoint", type=Path)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--with-finish", action="store_true", help="also time FID/KID + gates + card + report")
    ap.add_argument("--_child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        ckpt, n = Path(args._child[0]), int(args._child[1])
        with tempfile.TemporaryDirectory() as d:
            print(json.dumps(one_size(ckpt, n, Path(d), args.with_finish, args.batch_size)))
        return
    with tempfile.TemporaryDirectory() as work:
        ckpt = args.checkpoint or tiny_checkpoint(Path(work))
        print(f"checkpoint: {ckpt}")
        for n in args.sizes:
            cmd = [sys.executable, __file__, "--_child", str(ckpt), str(n), "--batch-size", str(args.batch_size)]
            if args.with_finish:
                cmd.append("--with-finish")
            out = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=os.getcwd())
            if out.returncode != 0:
                print(out.stderr[-3000:])
                raise SystemExit(out.returncode)
            print(json.dumps({"size": n, **json.loads(out.stdout.strip().splitlines()[-1])}))


if __name__ == "__main__":
    main()

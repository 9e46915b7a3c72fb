"""Multi-GPU (or multi-process CPU) training with torch DistributedDataParallel, started by torchrun.

    torchrun --nproc_per_node=N -m pipeline.train.ddp --config configs/photo-sphere-64.yaml [--set k=v ...]

What runs where:
- Backend: nccl when CUDA is available (rank r uses GPU LOCAL_RANK), gloo on CPU.
- The trainable networks (encoder, generator, discriminator, feedback) are wrapped in DDP, so their
  gradients are averaged across ranks at every backward and all ranks apply the same update; the
  frozen judges (expression classifier, identity embedder) are trained on every rank from the same
  seed and then broadcast from rank 0 so they agree bit for bit. The EMA generator is not wrapped:
  it is updated from the synchronised generator weights, so it stays identical everywhere.
- Batches: every rank samples its own batch of train.batch_size images (the global batch is
  N x train.batch_size; lower train.batch_size to keep it fixed). The sampler of rank r is seeded with
  train.seed + 1_000_003 * r, so rank 0 draws exactly what a single-process run draws and the other
  ranks draw different images. On resume rank 0 restores its sampler from the checkpoint and rank
  r > 0 reseeds with train.seed + 1_000_003 * r + global_step (checkpoints hold rank 0's state only).
- Rank 0 alone writes checkpoints, sample grids, the per-step log (train-log.jsonl) and the report;
  the other ranks train and exit. Resume works as for single-process runs (every rank reads last.pt).

Without torchrun (no WORLD_SIZE in the environment) `train_ddp` trains in one process with no
process group, which is also the reference a distributed run is compared with in tests.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from pipeline.config import Config, load_config
from pipeline.train.loop import StepInfo, Trainer, run_folder_lock

LOG_FILE = "train-log.jsonl"
# Networks the GAN step optimises; the judges are frozen after their own phase and not wrapped.
TRAINABLE = ("encoder", "generator", "discriminator", "feedback")
# Progressive networks use only the current resolution's layers (and the fade-in branch only while
# fading), so the rest get no gradient; DDP must then look for unused parameters every step.
PROGRESSIVE = ("generator", "discriminator")
RANK_SEED_STRIDE = 1_000_003


def rank_seed(seed: int, rank: int, global_step: int = 0) -> int:
    """Seed of rank `rank`'s batch sampler (see the module docstring)."""
    return seed + RANK_SEED_STRIDE * rank + global_step


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def wrap_ddp(trainer: Trainer, device: torch.device) -> None:
    """Point the trainer's step at DDP wrappers of its trainable networks (saving still sees plain ones)."""
    ids = [device.index] if device.type == "cuda" else None

    wrapped = {
        k: DDP(getattr(trainer.nets, k), device_ids=ids, find_unused_parameters=k in PROGRESSIVE) for k in TRAINABLE
    }
    trainer.train_nets = dataclasses.replace(trainer.nets, **wrapped)


@torch.no_grad()
def ranks_in_sync(trainer: Trainer) -> bool:
    """True if every rank holds the same trainable weights (what DDP's gradient averaging promises)."""
    total = torch.zeros(1, dtype=torch.float64, device=trainer.device)
    for k in (*TRAINABLE, "generator_ema"):
        for p in getattr(trainer.nets, k).parameters():
            total += p.detach().double().sum()
    lo, hi = total.clone(), total.clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    return bool(torch.equal(lo, hi))


def broadcast_module(module: nn.Module, src: int = 0) -> None:
    """Make every rank hold rank `src`'s parameters and buffers of `module`."""
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            dist.broadcast(t.data, src)


class _StepLog:
    """Rank 0's per-step JSON lines (every optimiser step, so short runs have a curve too)."""

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.f = path.open("a", encoding="utf-8")
        self.write({"event": "start", **header})

    def write(self, row: dict[str, Any]) -> None:
        self.f.write(json.dumps(row) + "\n")
        self.f.flush()

    def __call__(self, info: StepInfo) -> None:
        self.write({"phase": info.phase, "step": info.step, "total": info.total, **info.metrics})

    def close(self) -> None:
        self.f.close()


def train_ddp(cfg: Config, out_dir: Path | None = None) -> dict[str, Any]:
    """Train `cfg` on this rank (torchrun env: RANK, WORLD_SIZE, LOCAL_RANK); returns rank 0's summary."""
    rank, world, local = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0)
    # Rank 0 speaks for the run: it holds the run folder's lock (a refusal ends it, and torchrun the rest).
    with run_folder_lock(Path(out_dir or cfg.train.out_dir)) if rank == 0 else contextlib.nullcontext():
        return _train_rank(cfg, out_dir, rank, world, local)


def _train_rank(cfg: Config, out_dir: Path | None, rank: int, world: int, local: int) -> dict[str, Any]:
    distributed = world > 1
    use_cuda = torch.cuda.is_available() and cfg.train.device != "cpu"
    if use_cuda:
        torch.cuda.set_device(local)  # "cuda" now means this rank's GPU (Trainer resolves "cuda" to it)
    if distributed:
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(minutes=30))
    started = time.perf_counter()
    out = Path(out_dir or cfg.train.out_dir)
    log = _StepLog(out / LOG_FILE, {"world_size": world, "rank": rank}) if rank == 0 else None
    try:
        trainer = Trainer(cfg, out, progress=log)
        trainer.is_main = rank == 0
        if rank > 0:
            trainer.gen.manual_seed(rank_seed(cfg.train.seed, rank, trainer.global_step))
        # Per-rank global RNG (generator noise, dropout): rank 0 keeps the single-process stream.
        torch.manual_seed(rank_seed(cfg.train.seed, rank) + 1)
        trainer.run_judges()
        if distributed:
            broadcast_module(trainer.nets.classifier)
            broadcast_module(trainer.nets.embedder)
            wrap_ddp(trainer, trainer.device)
        while not trainer.finished:
            summary = trainer.run_stage()
            if rank == 0:
                trainer.sample_grid(out / "samples" / f"stage-{summary['resolution']:04d}.png")
        result: dict[str, Any] = {"rank": rank, "world_size": world, "checkpoint": None}
        if distributed:
            # Also a barrier: every rank finished its last step before rank 0 reports and all exit.
            result["ranks_in_sync"] = ranks_in_sync(trainer)
        if rank == 0:
            from pipeline.train.report import write_training_report  # here: it loads matplotlib

            final = trainer.ckpt_dir / "final.pt"
            if not final.exists():
                trainer.save("final.pt")
            report = write_training_report(
                out,
                trainer.stage_metrics,
                trainer.history,
                {"checkpoint": final, "world size": world, "wall seconds": round(time.perf_counter() - started, 1)},
            )
            result.update(checkpoint=str(final), report=str(report), log=str(out / LOG_FILE))
        return result
    finally:
        if log is not None:
            log.close()
        if distributed and dist.is_initialized():
            dist.destroy_process_group()


def read_log(path: Path) -> list[dict[str, Any]]:
    """The step rows of a train-log.jsonl (start events dropped)."""
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r for r in rows if r.get("event") != "start"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.train.ddp", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", "-c", type=Path, default=None, help="YAML config (defaults if omitted)")
    parser.add_argument("--set", "-s", dest="sets", action="append", default=[], help="override, e.g. train.lr=1e-3")
    parser.add_argument("--out", type=Path, default=None, help="run folder (overrides train.out_dir)")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.sets)
    result = train_ddp(cfg, args.out)
    if result["rank"] == 0:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

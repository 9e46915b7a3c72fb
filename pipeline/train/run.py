"""Train end to end without Prefect (the CLI and plain Python use this)."""

from __future__ import annotations

import resource
import time
from pathlib import Path
from typing import Any

from pipeline.config import Config
from pipeline.train.loop import ProgressFn, Trainer, run_folder_lock
from pipeline.train.report import write_training_report


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_training(cfg: Config, progress: ProgressFn | None = None, out_dir: Path | None = None) -> dict[str, Any]:
    """Train (or resume) into the run folder, holding its one-writer lock from before the data is loaded."""
    with run_folder_lock(Path(out_dir or cfg.train.out_dir)):
        return _run_training(cfg, progress, out_dir)


def _run_training(cfg: Config, progress: ProgressFn | None, out_dir: Path | None) -> dict[str, Any]:
    started = time.perf_counter()
    trainer = Trainer(cfg, out_dir, progress)
    trainer.run_judges()
    while not trainer.finished:
        stage_step(trainer)
    extra = {
        "device": trainer.device,
        "wall seconds (this invocation)": round(time.perf_counter() - started, 1),
        "peak RSS MB": round(peak_rss_mb()),
    }
    report = report_step(trainer, extra)
    return {"checkpoint": str(final_checkpoint(trainer)), "report": str(report), "stages": trainer.stage_metrics}


# The steps a training runs, shared by `run_training` and the Prefect flow (flows/train.py).


def stage_step(trainer: Trainer) -> tuple[dict[str, Any], Path]:
    """Train the next resolution stage, then draw its sample grid: (stage summary, grid path)."""
    summary = trainer.run_stage()
    grid = trainer.sample_grid(trainer.out / "samples" / f"stage-{summary['resolution']:04d}.png")
    return summary, grid


def final_checkpoint(trainer: Trainer) -> Path:
    final = trainer.ckpt_dir / "final.pt"
    if not final.exists():  # finished earlier; make sure the final checkpoint is there
        trainer.save("final.pt")
    return final


def report_step(trainer: Trainer, extra: dict[str, Any]) -> Path:
    """The training report (stage metrics, loss curves, `extra` rows) beside the run's checkpoints."""
    rows = {"checkpoint": final_checkpoint(trainer), **extra}
    return write_training_report(trainer.out, trainer.stage_metrics, trainer.history, rows)

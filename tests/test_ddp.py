"""DDP training via torchrun: two CPU processes on gloo finish, stay in sync, only rank 0 writes,
and the loss curve has the shape of a single-process run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from pipeline.config import load_config
from pipeline.train.ddp import LOG_FILE, read_log, train_ddp

SETS = ["train.judge_steps=10", "train.stages=[{resolution: 4, steps: 12}, {resolution: 8, steps: 6, fade_steps: 3}]"]


def _recon(run: Path, phase: str = "stage-4") -> list[float]:
    return [r["recon"] for r in read_log(run / LOG_FILE) if r["phase"] == phase]


def test_torchrun_two_cpu_ranks_match_single_process(tiny_data: Path, tmp_path: Path) -> None:
    sets = [f"data.root={tiny_data}", *SETS]
    single = tmp_path / "single"
    train_ddp(load_config(REPO / "configs" / "tiny.yaml", sets), single)  # no torchrun env: one process

    multi = tmp_path / "multi"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += ["-m", "pipeline.train.ddp", "--config", str(REPO / "configs" / "tiny.yaml"), "--out", str(multi)]
    for s in sets:
        cmd += ["--set", s]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["world_size"] == 2 and result["ranks_in_sync"] is True

    # Rank 0 alone writes: one checkpoint set, no half-written files, one "start" line in the log.
    names = sorted(p.name for p in (multi / "checkpoints").iterdir())
    assert names == ["final.pt", "last.pt", "stage-0004.pt", "stage-0008.pt"]
    starts = [json.loads(x) for x in (multi / LOG_FILE).read_text().splitlines() if '"event": "start"' in x]
    assert [(s["rank"], s["world_size"]) for s in starts] == [(0, 2)]

    one, two = _recon(single), _recon(multi)
    assert len(one) == len(two) == 12
    # Same init and rank 0 draws the single-process batch: the first step is the same computation.
    assert two[0] == pytest.approx(one[0], abs=1e-4)
    # Same shape: reconstruction falls in both runs, to a similar level (DDP averages 2 batches).
    for curve in (one, two):
        assert sum(curve[-3:]) / 3 < 0.8 * curve[0], curve
    assert sum(two[-3:]) / 3 == pytest.approx(sum(one[-3:]) / 3, rel=0.35)


def test_non_main_rank_writes_no_checkpoint(tiny_data: Path, tmp_path: Path) -> None:
    from pipeline.train.loop import Trainer

    trainer = Trainer(load_config(REPO / "configs" / "tiny.yaml", [f"data.root={tiny_data}", *SETS]), tmp_path / "r1")
    trainer.is_main = False
    trainer.save()
    trainer.finalize()
    assert not (tmp_path / "r1" / "checkpoints").exists() and trainer.codes is None

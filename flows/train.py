"""Prefect flow `train`: data prep -> judges -> one task per resolution stage -> evaluation -> report.

Thin orchestration over pipeline.train's steps (the ones `fersynth train` runs): tasks pass the
config and paths, never models. The tasks run one after another in the flow's process and share one
trainer; a trainer built anew (a new flow run) resumes from the run folder's last checkpoint, so a
killed flow run resumes at the step it reached when started again with the same config.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import flow, task

from flows import artifacts
from pipeline.cache import load_tensors
from pipeline.config import Config, config_to_dict, load_config
from pipeline.evaluate import evaluate_checkpoint
from pipeline.train.loop import Trainer, run_folder_lock
from pipeline.train.run import report_step, stage_step

# The trainer of the run this process is training, by its config: the tasks of one flow run share it.
_TRAINERS: dict[str, Trainer] = {}


def _cfg(cfg_dict: dict[str, Any]) -> Config:
    return Config.model_validate(cfg_dict)


def _trainer(cfg_dict: dict[str, Any]) -> Trainer:
    key = json.dumps(cfg_dict, sort_keys=True, default=str)
    if key not in _TRAINERS:
        _TRAINERS.clear()  # one run at a time per process
        _TRAINERS[key] = Trainer(_cfg(cfg_dict))
    return _TRAINERS[key]


@task(name="prepare-data", cache_result_in_memory=False)
def prepare_data(cfg_dict: dict[str, Any]) -> int:
    cfg = _cfg(cfg_dict)
    images, _ = load_tensors(Path(cfg.data.root), cfg.model.max_resolution, cfg.data.cache_dir)
    return int(images.shape[0])


@task(name="train-judges", cache_result_in_memory=False)
def judges_task(cfg_dict: dict[str, Any]) -> dict[str, float]:
    return _trainer(cfg_dict).run_judges()


@task(name="train-stage", task_run_name="stage-{resolution}px", cache_result_in_memory=False)
def stage_task(cfg_dict: dict[str, Any], stage_idx: int, resolution: int) -> dict[str, Any]:
    trainer = _trainer(cfg_dict)
    if trainer.stage_idx > stage_idx:  # finished in an earlier (interrupted) flow run
        return trainer.stage_metrics[stage_idx]
    summary, grid = stage_step(trainer)
    artifacts.table(f"train-stage-{resolution}", [summary], f"metrics of the {resolution} px stage")
    artifacts.png(f"train-samples-{resolution}", grid, f"samples after the {resolution} px stage")
    return summary


@task(name="evaluate", cache_result_in_memory=False)
def evaluate_task(checkpoint: str) -> dict[str, Any]:
    result = evaluate_checkpoint(Path(checkpoint))
    artifacts.table("train-evaluation", [result["metrics"]], "ground-truth swap evaluation on test identities")
    if result.get("grid"):
        artifacts.png("train-swap-grid", Path(result["grid"]), "swap grid on test identities")
    return result["metrics"]


@task(name="report", cache_result_in_memory=False)
def report_task(cfg_dict: dict[str, Any], evaluation: dict[str, Any] | None) -> str:
    extra = {f"eval {k}": v for k, v in (evaluation or {}).items()}
    path = report_step(_trainer(cfg_dict), extra)
    artifacts.markdown_file("train-report", path, "training report")
    return str(path)


@flow(name="train", log_prints=True)
def train_flow(
    config: str | None = None, overrides: list[str] | None = None, out_dir: str | None = None, evaluate: bool = True
) -> dict[str, Any]:
    cfg = load_config(config, overrides or [])
    if out_dir:
        cfg.train.out_dir = Path(out_dir)
    # The tasks run in this process, one after another: the flow holds the run folder's lock for them.
    with run_folder_lock(Path(cfg.train.out_dir)):
        try:
            return _train(cfg, evaluate)
        finally:
            _TRAINERS.clear()  # the networks and data go with the run


def _train(cfg: Config, evaluate: bool) -> dict[str, Any]:
    cfg_dict = config_to_dict(cfg)
    n = prepare_data(cfg_dict)
    print(f"training images (all splits): {n}")
    judges_task(cfg_dict)
    stages = [stage_task(cfg_dict, i, s.resolution) for i, s in enumerate(cfg.train.stages)]
    checkpoint = str(Path(cfg.train.out_dir) / "checkpoints" / "final.pt")
    evaluation = evaluate_task(checkpoint) if evaluate else None
    report = report_task(cfg_dict, evaluation)
    return {"checkpoint": checkpoint, "report": report, "stages": stages, "evaluation": evaluation}

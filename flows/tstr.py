"""Prefect flow `tstr`: one task per (recipe, seed, arm), then the report and bar plot as artifacts.

Thin orchestration over pipeline.tstr. Arms run one after another (each already uses the machine's
cores and DataLoader workers; running them side by side would only make them fight); an arm already
finished under the report folder is read back, not trained again; each task returns a small dict,
never a model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task

from flows import artifacts
from pipeline.config import Config, TstrConfig, load_config
from pipeline.tstr import jobs, prepare_run, report, result_from_dict, result_to_dict, run_arm


@task(name="tstr-arm", task_run_name="{recipe}-seed{seed}-{arm}", cache_result_in_memory=False)
def arm_task(
    recipe: str, seed: int, arm: str, synthetic: str | None, real: str, tstr_dict: dict[str, Any], out: str
) -> dict[str, Any]:
    cfg = TstrConfig.model_validate(tstr_dict)
    r, new = run_arm(recipe, seed, arm, Path(synthetic) if synthetic else None, Path(real), cfg, Path(out))
    print(f"{recipe} seed {seed} {arm}: accuracy {r.accuracy:.4f} macro F1 {r.macro_f1:.4f}{'' if new else ' (done)'}")
    return result_to_dict(r)


@task(name="tstr-report", cache_result_in_memory=False)
def report_task(results: list[dict[str, Any]], out: str) -> dict[str, str]:
    rep = report(Path(out), [result_from_dict(r) for r in results])
    for t in rep["targets"]:
        print(t["line"])
    files = rep["files"]
    artifacts.table("tstr-table", rep["summary"].round(4).to_dict("records"), "TSTR accuracy, mean and std over seeds")
    artifacts.markdown_file("tstr-report", files["markdown"], "TSTR table and targets")
    artifacts.png("tstr-plot", files["plot"], "TSTR accuracy per training arm and recipe")
    return {k: str(v) for k, v in files.items()}


@flow(name="tstr", log_prints=True)
def tstr_flow(
    synthetic: str | None,
    real: str,
    config: str | None = None,
    overrides: list[str] | None = None,
    out: str | None = None,
    cfg_dict: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """TSTR of `synthetic` (a generated dataset) against `real` (a labelled dataset)."""
    cfg = Config.model_validate(cfg_dict) if cfg_dict is not None else load_config(config, overrides or [])
    tstr_dict = cfg.tstr.model_dump(mode="json")
    out_dir = str(out or cfg.tstr.out_dir)
    prepare_run(Path(synthetic) if synthetic else None, Path(real), cfg.tstr, Path(out_dir))
    results = [arm_task(r, s, a, synthetic, real, tstr_dict, out_dir) for r, s, a in jobs(cfg.tstr)]
    files = report_task(results, out_dir)
    return {"rows": [{k: v for k, v in r.items() if k != "per_class_accuracy"} for r in results], "files": files}

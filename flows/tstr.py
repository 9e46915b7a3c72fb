"""Prefect flow `tstr`: one task per training arm, then the table and bar plot as artifacts.

Thin orchestration over pipeline.tstr. Arms run one after another (each already uses the machine's
cores and DataLoader workers; running them side by side would only make them fight), and each task
returns a small dict, never a model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task

from flows import artifacts
from pipeline.config import Config, TstrConfig, load_config


@task(name="tstr-arm", task_run_name="arm-{arm}", cache_result_in_memory=False)
def arm_task(arm: str, synthetic: str | None, real: str, tstr_dict: dict[str, Any]) -> dict[str, Any]:
    from pipeline.tstr import result_to_dict, train_arm

    cfg = TstrConfig.model_validate(tstr_dict)
    result = train_arm(arm, Path(synthetic) if synthetic else None, Path(real), cfg)
    print(f"{arm}: accuracy {result.accuracy:.4f} macro F1 {result.macro_f1:.4f} ({result.n_train} training images)")
    return result_to_dict(result)


@task(name="tstr-report", cache_result_in_memory=False)
def report_task(
    results: list[dict[str, Any]], synthetic: str | None, real: str, tstr_dict: dict[str, Any], out: str
) -> dict[str, str]:
    from pipeline.tstr import report_meta, result_from_dict, write_report

    cfg = TstrConfig.model_validate(tstr_dict)
    rows = [result_from_dict(r) for r in results]
    files = write_report(rows, Path(out), report_meta(Path(real), Path(synthetic) if synthetic else None, cfg))
    artifacts.table("tstr-table", [r.row() for r in rows], f"TSTR accuracy on the real {cfg.eval_split} split")
    artifacts.markdown_file("tstr-report", files["markdown"], "TSTR table")
    artifacts.png("tstr-plot", files["plot"], "TSTR accuracy per training arm")
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
    from pipeline.tstr import arms_of

    cfg = Config.model_validate(cfg_dict) if cfg_dict is not None else load_config(config, overrides or [])
    tstr_dict = cfg.tstr.model_dump(mode="json")
    out_dir = str(out or cfg.tstr.out_dir)
    results = [arm_task(arm, synthetic, real, tstr_dict) for arm in arms_of(cfg.tstr)]
    files = report_task(results, synthetic, real, tstr_dict, out_dir)
    return {"rows": [{k: v for k, v in r.items() if k != "per_class_accuracy"} for r in results], "files": files}

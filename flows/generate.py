"""Prefect flow `generate`: plan -> one mapped task per shard -> gates -> publish -> artifacts.

Thin orchestration over pipeline.generate: tasks pass paths, ids and small dicts (never models or
images), keep no results in memory, and map over shards, not images. A rejected dataset ends the
flow run Failed with every failed gate's value and threshold; it stays in staging for inspection.

The task runner comes from the config: generate.task_runner = "threads" (ThreadPoolTaskRunner,
generate.max_workers shards at once) or "dask" (prefect_dask.DaskTaskRunner on a local cluster of
generate.max_workers single-threaded processes, or on generate.dask_address). Output is identical
either way: every sample is rendered from its own seeds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.futures import wait
from prefect.states import Failed

from flows import artifacts
from pipeline.config import Config, config_to_dict
from pipeline.generate import finish, pending_shards, prepare, publish, render_shard, resolve_config


def _run_id() -> str:
    from prefect.runtime import flow_run

    return str(flow_run.id or "local")[:36]


# The dataset locks `plan_task` took, by staging folder: the flow gives each back when it ends.
# plan_task is called directly in the flow (not submitted), so it runs in the flow's own process.
_HELD_LOCKS: dict[str, Any] = {}


@task(name="plan", cache_result_in_memory=False)
def plan_task(
    cfg_dict: dict[str, Any],
    checkpoint: str,
    out: str,
    name: str | None,
    overwrite: bool,
    calibration: dict[str, Any] | None = None,
) -> dict[str, Any]:
    cfg = Config.model_validate(cfg_dict)
    prep = prepare(cfg, Path(checkpoint), Path(out), name=name, overwrite=overwrite, calibration=calibration)
    _HELD_LOCKS[str(prep.staging)] = prep
    todo = [] if prep.published else pending_shards(prep.staging)
    return {
        "name": prep.name,
        "staging": str(prep.staging),
        "final": str(prep.final),
        "plan_key": prep.plan_key,
        "n_items": prep.n_items,
        "n_shards": prep.n_shards,
        "published": prep.published,
        "todo": todo,
    }


@task(name="render-shard", task_run_name="shard-{index}", cache_result_in_memory=False)
def shard_task(staging: str, index: int, run_id: str) -> dict[str, Any]:
    return render_shard(Path(staging), index, run_id)


@task(name="gates", cache_result_in_memory=False)
def gates_task(staging: str, run_id: str) -> dict[str, Any]:
    return finish(None, Path(staging), run_id)


@task(name="publish", cache_result_in_memory=False)
def publish_task(staging: str, final: str, verdict: dict[str, Any], overwrite: bool) -> str:
    return str(publish(Path(staging), Path(final), verdict, overwrite))


@flow(name="generate", log_prints=True)
def generate_flow(
    checkpoint: str,
    out: str,
    cfg_dict: dict[str, Any],
    name: str | None = None,
    overwrite: bool = False,
    calibration: dict[str, Any] | None = None,
) -> Any:
    """`cfg_dict` with `calibration`: a config resolved once (`run_generate_flow`); without it, resolved here."""
    run_id = _run_id()
    prep = plan_task(cfg_dict, checkpoint, out, name, overwrite, calibration)
    try:
        return _render_judge_publish(prep, run_id, overwrite)
    finally:
        held = _HELD_LOCKS.pop(prep["staging"], None)
        if held is not None:
            held.release()


def _render_judge_publish(prep: dict[str, Any], run_id: str, overwrite: bool) -> Any:
    print(
        f"plan {prep['plan_key'][:10]}: {prep['n_items']} images in {prep['n_shards']} shard(s); to render: {len(prep['todo'])}"
    )
    if prep["published"]:
        print(f"already published: {prep['final']}")
        return {"status": "published", "dataset_dir": prep["final"], "run_id": run_id}
    futures = shard_task.map(prep["staging"], prep["todo"], run_id)
    wait(futures)
    failed = [f for f in futures if f.state.is_failed()]
    if failed:
        return Failed(message=f"{len(failed)} shard task(s) failed; rerun to resume: {failed[0].state.message}")
    verdict = gates_task(prep["staging"], run_id)
    where = publish_task(prep["staging"], prep["final"], verdict, overwrite)
    artifacts.table("generate-gates", [_gate_row(g) for g in verdict["gates"]], f"quality gates of {prep['name']}")
    artifacts.png(
        "generate-sample-grid", Path(where) / Path(verdict["grid"]).relative_to(prep["staging"]), "sample grid"
    )
    result = {"status": verdict["status"], "dataset_dir": where, "run_id": run_id, "metrics": verdict["metrics"]}
    if not verdict["passed"]:
        return Failed(message=f"dataset {prep['name']} rejected (kept in {where}): {verdict['failed_message']}")
    return result


def _gate_row(g: dict[str, Any]) -> dict[str, Any]:
    return {k: g.get(k) for k in ("name", "value", "op", "threshold", "passed", "enforced", "note")}


def task_runner(cfg: Config) -> Any:
    """The Prefect task runner named by generate.task_runner."""
    gen = cfg.generate
    if gen.task_runner == "dask":
        from prefect_dask import DaskTaskRunner

        if gen.dask_address:
            return DaskTaskRunner(address=gen.dask_address)
        # One thread per worker process: torch already uses the cores, and processes avoid the GIL.
        return DaskTaskRunner(cluster_kwargs={"n_workers": gen.max_workers, "threads_per_worker": 1, "processes": True})
    from prefect.task_runners import ThreadPoolTaskRunner

    return ThreadPoolTaskRunner(max_workers=gen.max_workers)


def run_generate_flow(
    cfg: Config | None,
    checkpoint: Path | str,
    out: Path | str,
    *,
    name: str | None = None,
    overwrite: bool = False,
    overrides: list[str] | None = None,
    return_state: bool = False,
) -> Any:
    """Resolve the config (checkpoint's own when `cfg` is None), pick the runner, run the flow."""
    cfg, calibration = resolve_config(cfg, Path(checkpoint), overrides)
    f = generate_flow.with_options(task_runner=task_runner(cfg))
    return f(
        str(checkpoint),
        str(out),
        config_to_dict(cfg),
        name=name,
        overwrite=overwrite,
        calibration=calibration,
        return_state=return_state,
    )

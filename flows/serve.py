"""Scheduled dataset generation: a Prefect deployment of the `generate` flow on a cron schedule.

`generate-scheduled` is a small parent flow: it names a new dataset version and runs the
`generate` flow (flows.generate) as a subflow for it. The name is
`<schedule.name_prefix>-<UTC start time>-<first 8 hex of the flow run id>`, so every scheduled
run writes a new folder and a published dataset is never overwritten (the subflow also runs with
overwrite=False, and an existing folder of that name stops the run before any work).

Two ways to run it (docs/scheduling.md):
- `fersynth serve --config C.yaml`: `prefect.serve(...)` in this process (no work pool needed);
- prefect.yaml + `prefect deploy`: a work-pool deployment picked up by `prefect worker start`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.schedules import Cron

from pipeline.config import Config, ConfigError, config_to_dict, load_config

FLOW_NAME = "generate-scheduled"


def version_name(prefix: str, when: datetime, run_id: str | None) -> str:
    """Folder name of one dataset version: sortable by time, unique by run id."""
    stamp = when.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    suffix = (run_id or "local").replace("-", "")[:8]
    return f"{prefix}-{stamp}-{suffix}"


def _run_facts() -> tuple[datetime, str | None]:
    from prefect.runtime import flow_run

    when = flow_run.scheduled_start_time or datetime.now(UTC)
    return when, flow_run.id


@flow(name=FLOW_NAME, log_prints=True)
def scheduled_generate_flow(
    config: str | None = None, overrides: list[str] | None = None, cfg_dict: dict[str, Any] | None = None
) -> Any:
    """Generate one new dataset version from `schedule.checkpoint` into `schedule.out`."""
    from flows.generate import run_generate_flow

    cfg = Config.model_validate(cfg_dict) if cfg_dict is not None else load_config(config, overrides or [])
    sched = cfg.schedule
    if sched.checkpoint is None:
        raise ConfigError("schedule.checkpoint is not set: the checkpoint scheduled runs render from")
    when, run_id = _run_facts()
    name = version_name(sched.name_prefix, when, run_id)
    target = Path(sched.out) / name
    if target.exists():
        # Names carry the run id, so this only happens when a run is retried by hand; never replace it.
        raise FileExistsError(f"{target} already exists; a scheduled run never overwrites a dataset")
    print(f"dataset version {name} -> {target}")
    # return_state: a rejected dataset ends the subflow Failed; returning that state fails this run
    # with the same message instead of raising from inside the parent.
    return run_generate_flow(cfg, sched.checkpoint, sched.out, name=name, overwrite=False, return_state=True)


def schedule_of(cfg: Config) -> Cron:
    if not cfg.schedule.cron:
        raise ConfigError("schedule.cron is not set (e.g. --set 'schedule.cron=0 3 * * *')")
    return Cron(cfg.schedule.cron, timezone=cfg.schedule.timezone)


def build_deployment(cfg: Config, *, work_pool: str | None = None) -> Any:
    """The RunnerDeployment of `generate-scheduled` for `cfg` (config snapshot as its parameter).

    The whole config goes in as `cfg_dict`, so a run renders with the settings the deployment was
    made with, whatever happens to the YAML file later.
    """
    return scheduled_generate_flow.to_deployment(
        name=cfg.schedule.deployment_name,
        schedule=schedule_of(cfg),
        parameters={"cfg_dict": config_to_dict(cfg)},
        description="Render a new fersynth dataset version on a schedule (never overwrites one).",
        tags=["fersynth", "generate"],
        work_pool_name=work_pool,
    )


def serve_generate(cfg: Config, *, limit: int | None = None) -> None:
    """Serve the scheduled deployment from this process until interrupted (Prefect's own `serve`)."""
    from prefect import serve

    if cfg.schedule.checkpoint is None:
        raise ConfigError("schedule.checkpoint is not set: the checkpoint scheduled runs render from")
    # pause_on_shutdown=False: stopping the server must not leave the schedule paused for a later
    # `prefect deploy` / worker to find.
    serve(build_deployment(cfg), pause_on_shutdown=False, limit=limit)

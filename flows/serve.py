"""Scheduled dataset generation: a Prefect deployment of the `generate` flow on a cron schedule.

`generate-scheduled` is a small parent flow: it names a new dataset version and runs the
`generate` flow (flows.generate) as a subflow for it. The name is
`<schedule.name_prefix>-<UTC start time>-<first 8 hex of the flow run id>`, so every scheduled
run writes a new folder and a published dataset is never overwritten (the subflow also runs with
overwrite=False, and an existing folder of that name stops the run before any work).

Two ways to run it (docs/scheduling.md), under different deployment names so that neither takes
over the other's deployment (and with it the other's pull steps and schedule):
- `fersynth serve --config C.yaml`: a Prefect runner in this process (no work pool needed),
  deployment `generate-scheduled/<schedule.deployment_name>`;
- prefect.yaml + `prefect deploy`: a work-pool deployment picked up by `prefect worker start`,
  deployment `generate-scheduled/fersynth-generate-pool`.

A failed run ends with its one-line reason as the state message (the failed gates, the missing
file), not Prefect's "1/1 states failed.".
"""

from __future__ import annotations

import asyncio
import signal
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from prefect import flow
from prefect.schedules import Cron
from prefect.states import Failed

import flows.generate
from pipeline.config import Config, ConfigError, config_to_dict, load_config

FLOW_NAME = "generate-scheduled"
PREFECT_YAML = Path(__file__).resolve().parents[1] / "prefect.yaml"
# Prefect's own prefixes of an exception's state message; the reason is what follows them.
_STATE_PREFIXES = ("Flow run encountered an exception: ", "Task run encountered an exception ")


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
    # return_state: a rejected dataset ends the subflow Failed; this run then fails with the subflow's
    # one-line reason (returning the state itself would give Prefect's "1/1 states failed.").
    state = flows.generate.run_generate_flow(
        cfg, sched.checkpoint, sched.out, name=name, overwrite=False, return_state=True
    )
    if not hasattr(state, "is_completed"):  # a plain value (tests stand in a fake subflow)
        return state
    if not state.is_completed():
        reason = failure_reason(state)
        print(f"dataset version {name} failed: {reason}")
        return Failed(message=reason)
    return state.result()


def failure_reason(state: Any) -> str:
    """One line saying why a run failed: the failed gates or the exception's own text."""
    msg = state.message or f"run ended {state.type.value.lower()}"
    for prefix in _STATE_PREFIXES:
        msg = msg.removeprefix(prefix)
    return " ".join(msg.split())


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


def work_pool_deployment_names(prefect_yaml: Path = PREFECT_YAML) -> set[str]:
    """The deployment names prefect.yaml gives its work-pool deployments."""
    if not prefect_yaml.is_file():
        return set()
    spec = yaml.safe_load(prefect_yaml.read_text(encoding="utf-8")) or {}
    return {d["name"] for d in spec.get("deployments") or [] if d.get("name")}


def check_serve(cfg: Config) -> None:
    """Everything `serve_generate` refuses, checked before anything is registered (one-line errors)."""
    sched = cfg.schedule
    schedule_of(cfg)
    if sched.checkpoint is None:
        raise ConfigError("schedule.checkpoint is not set: the checkpoint scheduled runs render from")
    if not Path(sched.checkpoint).is_file():
        raise FileNotFoundError(f"schedule.checkpoint {sched.checkpoint}: no such file")
    if sched.deployment_name in work_pool_deployment_names():
        raise ConfigError(
            f"schedule.deployment_name {sched.deployment_name!r} is the work-pool deployment of {PREFECT_YAML.name}; "
            "`fersynth serve` needs a name of its own (e.g. --set schedule.deployment_name=fersynth-generate)"
        )


def _check_not_a_work_pool_deployment(name: str) -> None:
    """Refuse to take over a deployment of that name that a work pool runs (made by `prefect deploy`)."""
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            existing = client.read_deployment_by_name(f"{FLOW_NAME}/{name}")
        except ObjectNotFound:
            return
    if existing.work_pool_name:
        raise ConfigError(
            f"schedule.deployment_name {name!r}: deployment {FLOW_NAME}/{name} already exists on work pool "
            f"{existing.work_pool_name!r}; `fersynth serve` would take it over; pick another schedule.deployment_name"
        )


def serve_generate(cfg: Config, *, limit: int | None = None) -> None:
    """Serve the scheduled deployment from this process until SIGINT or SIGTERM (a Prefect runner)."""
    check_serve(cfg)
    _check_not_a_work_pool_deployment(cfg.schedule.deployment_name)
    asyncio.run(_serve(build_deployment(cfg), limit))


async def _serve(deployment: Any, limit: int | None) -> None:
    """Prefect's `serve`, with a shutdown that awaits the runner's stop on SIGINT and SIGTERM.

    (Prefect's own SIGTERM handler calls the runner's stop from inside the event loop, which only
    makes a coroutine that is never awaited.)
    """
    from prefect.runner import Runner

    # pause_on_shutdown=False: stopping must not leave the schedule paused for a later start to find.
    runner = Runner(pause_on_shutdown=False, limit=limit)
    await runner.aadd_deployment(deployment)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    main = asyncio.create_task(runner.start())
    await asyncio.sleep(0)  # runner.start() installs its own SIGTERM handler first; ours replaces it
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"serving {FLOW_NAME}/{deployment.name}; SIGINT (Ctrl-C) or SIGTERM stops it", flush=True)
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({main, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if not main.done():
            print("stopping: no new runs are started", flush=True)
            if runner.started:
                await runner.astop()
            await main
        else:
            main.result()
    finally:
        stopper.cancel()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)

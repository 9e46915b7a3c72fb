"""Scheduled generation: cron validated at config load, deployment + schedule registered with Prefect."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from typer.testing import CliRunner

from pipeline.config import ConfigError, load_config


def test_bad_cron_and_timezone_name_the_field() -> None:
    with pytest.raises(ConfigError, match=r"schedule\.cron: .*not a valid cron schedule.*61 \* \* \* \*"):
        load_config(None, ["schedule.cron=61 * * * *"])
    with pytest.raises(ConfigError, match=r"schedule\.timezone: .*unknown IANA time zone 'Mars/Olympus'"):
        load_config(None, ["schedule.cron=0 3 * * *", "schedule.timezone=Mars/Olympus"])
    cfg = load_config(None, ["schedule.cron='*/15 2-4 * * 1-5'", "schedule.timezone=Europe/Berlin"])
    assert cfg.schedule.cron == "*/15 2-4 * * 1-5"


def test_every_run_gets_a_new_version_name() -> None:
    from flows.serve import version_name

    t = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    a = version_name("faces", t, "0b1c2d3e-aaaa-bbbb-cccc-000000000000")
    assert a == "faces-20260102T030405Z-0b1c2d3e"
    assert version_name("faces", t, "ffffffff-0000") != a  # same minute, other run: other folder


def test_prefect_yaml_is_a_work_pool_deployment() -> None:
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    (dep,) = spec["deployments"]
    assert dep["entrypoint"] == "flows/serve.py:scheduled_generate_flow"
    assert dep["work_pool"]["name"] and dep["schedules"][0]["cron"]
    load_config(None, [f"schedule.cron={dep['schedules'][0]['cron']}"])  # the YAML's cron parses too


def test_deployment_and_schedule_registered(tmp_path: Path, prefect_api: str) -> None:
    from prefect import get_client

    from flows.serve import FLOW_NAME, build_deployment

    cfg = load_config(
        None,
        [
            "schedule.cron=30 4 * * 1",
            "schedule.timezone=Europe/Paris",
            "schedule.deployment_name=weekly-faces",
            f"schedule.checkpoint={tmp_path / 'final.pt'}",
            f"schedule.out={tmp_path / 'datasets'}",
        ],
    )
    dep_id = build_deployment(cfg).apply()
    with get_client(sync_client=True) as client:
        dep = client.read_deployment_by_name(f"{FLOW_NAME}/weekly-faces")
        assert dep.id == dep_id
        (sched,) = dep.schedules
        assert sched.active and sched.schedule.cron == "30 4 * * 1" and sched.schedule.timezone == "Europe/Paris"
        assert dep.parameters["cfg_dict"]["schedule"]["out"] == str(tmp_path / "datasets")


def test_cli_serve_refuses_missing_schedule() -> None:
    from pipeline.cli import app

    result = CliRunner().invoke(app, ["serve", "--set", "schedule.checkpoint=x.pt"])
    assert result.exit_code == 2 and "schedule.cron is not set" in result.output
    result = CliRunner().invoke(app, ["serve", "--set", "schedule.cron=0 0 31 2 *x"])
    assert result.exit_code == 2 and "schedule.cron" in result.output


def test_scheduled_run_names_a_new_version_and_never_overwrites(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import flows.generate
    from flows.serve import scheduled_generate_flow
    from pipeline.config import config_to_dict

    calls: list[dict] = []
    monkeypatch.setattr(flows.generate, "run_generate_flow", lambda cfg, ckpt, out, **kw: calls.append(kw) or "ok")
    sets = [f"schedule.checkpoint={tmp_path / 'final.pt'}", f"schedule.out={tmp_path}", "schedule.name_prefix=faces"]
    cfg_dict = config_to_dict(load_config(None, sets))
    assert scheduled_generate_flow.fn(cfg_dict=cfg_dict) == "ok"
    (call,) = calls
    assert call["name"].startswith("faces-") and call["overwrite"] is False

    monkeypatch.setattr("flows.serve.version_name", lambda *a: "faces-taken")
    (tmp_path / "faces-taken").mkdir()
    with pytest.raises(FileExistsError, match="never overwrites"):
        scheduled_generate_flow.fn(cfg_dict=cfg_dict)
    with pytest.raises(ConfigError, match=r"schedule\.checkpoint is not set"):
        scheduled_generate_flow.fn(cfg_dict=config_to_dict(load_config(None, [])))

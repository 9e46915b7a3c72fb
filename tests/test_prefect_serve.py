"""`fersynth serve`: refusals before anything is registered, and a clean stop on SIGTERM and SIGINT."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from typer.testing import CliRunner

FERSYNTH = str(Path(sys.executable).with_name("fersynth"))


def test_serve_refuses_a_missing_checkpoint_in_one_line(tmp_path: Path) -> None:
    from pipeline.cli import app

    missing = tmp_path / "nope.pt"
    result = CliRunner().invoke(
        app, ["serve", "--set", "schedule.cron=0 3 * * *", "--set", f"schedule.checkpoint={missing}"]
    )
    assert result.exit_code == 2
    (line,) = [x for x in result.output.splitlines() if x.startswith("error:")]
    assert f"schedule.checkpoint {missing}: no such file" in line


def test_serve_never_takes_the_work_pool_deployments_name(tmp_path: Path) -> None:
    from pipeline.cli import app

    (pool_name,) = [d["name"] for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]]
    ckpt = tmp_path / "final.pt"
    ckpt.write_bytes(b"x")
    sets = ["schedule.cron=0 3 * * *", f"schedule.checkpoint={ckpt}", f"schedule.deployment_name={pool_name}"]
    result = CliRunner().invoke(app, ["serve", *[a for s in sets for a in ("--set", s)]])
    assert result.exit_code == 2 and "work-pool deployment of prefect.yaml" in result.output
    # and the defaults differ: serve's own name is not prefect.yaml's
    from pipeline.config import load_config

    assert load_config(None, []).schedule.deployment_name != pool_name


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sig", "on_server"), [(signal.SIGTERM, False), (signal.SIGINT, True)], ids=["SIGTERM-ephemeral", "SIGINT-server"]
)
def test_serve_stops_cleanly_on_a_signal(
    sig: signal.Signals, on_server: bool, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    ckpt = tmp_path / "final.pt"
    ckpt.write_bytes(b"x")  # serve only checks that the file is there; no run fires before the stop
    # Both ways a user runs it: Prefect's ephemeral API (no PREFECT_API_URL) and a running server.
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    if on_server:
        env["PREFECT_API_URL"] = request.getfixturevalue("prefect_server")
    args = [FERSYNTH, "serve", "--set", "schedule.cron=0 3 1 1 *", "--set", f"schedule.checkpoint={ckpt}"]
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "SIGINT (Ctrl-C) or SIGTERM stops it" in line:
                break
        else:
            pytest.fail("serve did not start within 240 s:\n" + "".join(lines))
        assert proc.poll() is None, "".join(lines)
        time.sleep(2)
        proc.send_signal(sig)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = "".join(lines) + rest
    assert proc.returncode == 0, output
    assert "never awaited" not in output and "Traceback" not in output, output

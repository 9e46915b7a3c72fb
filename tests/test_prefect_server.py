"""Scheduled generation on a real Prefect server and worker, with the commands docs/scheduling.md gives.

A `prefect server` on loopback (temporary PREFECT_HOME), a `process` work pool, `prefect deploy` of the
generation deployment from prefect.yaml (an interval schedule and the tiny config as parameters), a
`prefect worker` started in the checkout: the schedule fires by itself, the run completes and the
dataset is published. Everything started here is stopped here, children of the worker included.

The tiny GAN's renders cannot pass the expression judge; the worker's flow runs stand in a judge that
agrees (a `sitecustomize` on the worker's PYTHONPATH), as the in-process publish tests do with the
`ideal_classifier` fixture. Nothing else about the run is replaced.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO
from fast_settings import FAST_GENERATE, FAST_USEFULNESS, LENIENT_GATES

from manifests.layout import SUCCESS_MARKER

PREFECT = str(Path(sys.executable).with_name("prefect"))
DEPLOYMENT = "generate-scheduled/fersynth-generate-pool"

pytestmark = pytest.mark.slow

AGREEING_JUDGE = """
import importlib.abc, importlib.util, sys


class _AgreeingJudge(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "pipeline.generate.checks":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            import numpy as np

            def agree(classifier, images, target_idx, threshold=0.5, batch_size=64, device="auto"):
                t = np.asarray(target_idx)
                return t, np.full(len(t), 0.9), np.ones(len(t), bool)

            module.expression_scores = agree

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _AgreeingJudge())
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (the worker starts its flow runs in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group, then SIGKILL whatever of it and its descendants is left."""
    below = _descendants(proc.pid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    for pid in below + _descendants(proc.pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def _started(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        _stop(proc)


def _cli(args: list[str], env: dict[str, str]) -> str:
    done = subprocess.run([PREFECT, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"prefect {' '.join(args)}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _wait_healthy(url: str, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert server.poll() is None, f"prefect server exited: {log.read_text()[-3000:]}"
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/health", timeout=5) as r:
            if r.status == 200:
                return
        time.sleep(1)
    pytest.fail(f"prefect server not healthy after 180 s: {log.read_text()[-3000:]}")


def _first_finished_run(url: str, worker: subprocess.Popen[bytes], log: Path, timeout: float) -> object:
    from prefect import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
    from prefect.settings import PREFECT_API_URL, temporary_settings

    deadline = time.monotonic() + timeout
    name = DeploymentFilter(name=DeploymentFilterName(any_=[DEPLOYMENT.split("/")[1]]))
    with temporary_settings({PREFECT_API_URL: url}), get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            assert worker.poll() is None, f"prefect worker exited: {log.read_text()[-3000:]}"
            for run in client.read_flow_runs(deployment_filter=name):
                if run.state is not None and run.state.is_final():
                    return run
            time.sleep(3)
    pytest.fail(f"no scheduled run finished within {timeout:.0f} s; worker log:\n{log.read_text()[-4000:]}")


def test_schedule_fires_on_a_real_server_and_worker(tiny: Path, fid_weights: Path, tmp_path: Path) -> None:
    home = tmp_path / "prefect-home"
    home.mkdir()
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(AGREEING_JUDGE)
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home}/prefect.db",
        "PREFECT_API_URL": url,
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "DO_NOT_TRACK": "1",
        "COLUMNS": "300",  # `prefect ... ls` tables: whole names
        "PWD": str(REPO),  # the worker is started in the checkout, as from a shell there
    }
    out = tmp_path / "datasets"
    overrides = [
        f"schedule.checkpoint={tiny}",
        f"schedule.out={out}",
        "schedule.name_prefix=tiny",
        f"data.root={tiny.parents[2] / 'data'}",
        *FAST_GENERATE,
        *FAST_USEFULNESS,
        *LENIENT_GATES,
        f"quality.fid_weights={fid_weights}",
    ]
    params = json.dumps({"config": "configs/tiny.yaml", "overrides": overrides})
    server_log, worker_log = tmp_path / "server.log", tmp_path / "worker.log"
    server_cmd = [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui"]
    with _started(server_cmd, env, server_log) as server:
        _wait_healthy(url, server, server_log)
        _cli(["work-pool", "create", "fersynth-pool", "--type", "process"], env)
        _cli(["--no-prompt", "deploy", "--name", "fersynth-generate-pool", "--interval", "20", "--params", params], env)
        assert "fersynth-generate-pool" in _cli(["deployment", "ls"], env)
        worker_env = {**env, "PYTHONPATH": os.pathsep.join([str(shim), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
        worker_cmd = [PREFECT, "worker", "start", "--pool", "fersynth-pool", "--limit", "1"]
        with _started(worker_cmd, worker_env, worker_log) as worker:
            run = _first_finished_run(url, worker, worker_log, timeout=480)
        assert run.state.is_completed(), f"{run.state.type}: {run.state.message}\n{worker_log.read_text()[-4000:]}"
        assert run.auto_scheduled  # fired by the schedule, not by hand
        assert run.name in _cli(["flow-run", "ls", "--state-type", "COMPLETED"], env)
    published = [p for p in out.iterdir() if p.name.startswith("tiny-")]
    assert len(published) >= 1 and all((p / SUCCESS_MARKER).is_file() for p in published)

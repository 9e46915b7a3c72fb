"""Scheduled generation on a real Prefect server and worker, with the commands docs/scheduling.md gives.

The session's `prefect server` on loopback (tests/conftest.py, temporary PREFECT_HOME), a `process` work
pool, `prefect deploy` of the generation deployment from prefect.yaml (an interval schedule and the tiny
config as parameters), a `prefect worker` started in the checkout: the schedule fires by itself, the run completes and the
dataset is published. The worker is stopped here, its flow runs' processes included.

The tiny GAN's renders cannot pass the expression judge; the worker's flow runs stand in a judge that
agrees (a `sitecustomize` on the worker's PYTHONPATH), as the in-process publish tests do with the
`ideal_classifier` fixture. Nothing else about the run is replaced.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from conftest import REPO
from fast_settings import FAST_GENERATE, FAST_USEFULNESS, LENIENT_GATES
from local_prefect import PREFECT, started

from manifests.layout import SUCCESS_MARKER

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


def _cli(args: list[str], env: dict[str, str]) -> str:
    done = subprocess.run([PREFECT, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"prefect {' '.join(args)}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


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


def test_schedule_fires_on_a_real_server_and_worker(
    tiny: Path, fid_weights: Path, prefect_server: str, tmp_path: Path
) -> None:
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(AGREEING_JUDGE)
    url = prefect_server
    env = {
        **os.environ,
        "PREFECT_API_URL": url,
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
    _cli(["work-pool", "create", "fersynth-pool", "--type", "process"], env)
    # Every 5 s, not the docs' 20: the first run fires sooner and nothing else differs.
    _cli(["--no-prompt", "deploy", "--name", "fersynth-generate-pool", "--interval", "5", "--params", params], env)
    assert "fersynth-generate-pool" in _cli(["deployment", "ls"], env)
    worker_env = {**env, "PYTHONPATH": os.pathsep.join([str(shim), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    worker_cmd = [PREFECT, "worker", "start", "--pool", "fersynth-pool", "--limit", "1"]
    worker_log = tmp_path / "worker.log"
    with started(worker_cmd, worker_env, worker_log, REPO) as worker:
        run = _first_finished_run(url, worker, worker_log, timeout=480)
    assert run.state.is_completed(), f"{run.state.type}: {run.state.message}\n{worker_log.read_text()[-4000:]}"
    assert run.auto_scheduled  # fired by the schedule, not by hand
    assert run.name in _cli(["flow-run", "ls", "--state-type", "COMPLETED"], env)
    published = [p for p in out.iterdir() if p.name.startswith("tiny-")]
    assert len(published) >= 1 and all((p / SUCCESS_MARKER).is_file() for p in published)

"""Output that is not a terminal: plain, timestamped, unwrapped lines as work goes, not bars at exit."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO

STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d "

SCRIPT = """
import time
from pipeline.cli.progress import PhaseProgress, log_line
with PhaseProgress(("loss",)) as bar:
    for i in range(1, 4):
        bar("render", i, 3, {"loss": 0.5, "other": 1.0})
    log_line("gate kid_mean: " + "x" * 150 + " pass")
    time.sleep(30)
"""


def test_a_log_file_gets_timestamped_unwrapped_lines_while_the_command_runs(tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    with log.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-c", SCRIPT], cwd=REPO, stderr=err, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while "pass" not in log.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.5)
        lines = log.read_text().splitlines()
        assert proc.poll() is None  # written as it goes, not when the process ends
    finally:
        proc.kill()
        proc.wait()
    assert all(re.match(STAMP, line) for line in lines), lines
    text = "\n".join(line[26:] for line in lines)
    assert "render: started (3 steps)" in text and "render: 1/3" in text and "render: 2/3" in text
    assert "render: done 3/3" in text and "loss=0.5" in text and "other" not in text
    assert any(line.endswith("x" * 150 + " pass") for line in lines)  # one line, not wrapped at 80 columns
    assert "━" not in log.read_text()  # no progress bars


def test_a_long_step_logs_a_line_at_least_every_heartbeat(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    import pipeline.cli.progress as progress

    monkeypatch.setattr(progress, "HEARTBEAT_S", 0.5)
    with progress.PhaseProgress(plain=True) as bar:
        bar("train", 1, 10_000, {})
        time.sleep(2.0)
        for step in range(2, 50):  # a phase of many steps: throttled, not a line per step
            bar("train", step, 10_000, {})
    err = capsys.readouterr().err
    assert "train: started (10000 steps)" in err
    assert err.count("still working: train at 1/10000") >= 2
    assert "train: 3/10000" not in err and "train: stopped at 49/10000" in err

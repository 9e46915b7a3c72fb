"""benchmarks/gpu_run.py rehearsed on a CPU (--tiny): the GPU session's every step, and what it brings back.

A device session is short and lent by chance, so the script has to work the first time it meets a GPU:
this runs the same steps on configs/tiny.yaml and checks the figures and the output limits.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO

SCRIPT = REPO / "benchmarks" / "gpu_run.py"
MiB = 2**20


@pytest.mark.slow
def test_tiny_rehearsal_measures_every_step_within_the_output_limits(tmp_path: Path, fid_weights: Path) -> None:
    out, work = tmp_path / "out", tmp_path / "work"
    env = {**os.environ, "FERSYNTH_FID_WEIGHTS": str(fid_weights), "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    cmd = [sys.executable, str(SCRIPT), "--tiny", "--device", "cpu", "--out", str(out), "--work", str(work)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    fig = json.loads((out / "figures.json").read_text())
    assert fig["mode"] == "tiny" and fig["failed_steps"] == 0
    assert {st["status"] for st in fig["steps"]} == {"ok"}, fig["steps"]
    names = [st["name"] for st in fig["steps"]]
    for step in ("environment", "data tiny-16", "probe tiny", "train tiny", "evaluate tiny", "export tiny"):
        assert step in names
    assert all(st["seconds"] >= 0 for st in fig["steps"])

    env_fig = fig["environment"]
    assert env_fig["torch"] == torch.__version__ and env_fig["device"] == "cpu"
    assert isinstance(env_fig["bf16_native"], bool) and env_fig["torch_compile"]["used"] is False
    assert env_fig["packages"]["torch"] and "triton" in env_fig["packages"]  # a missing one reads "missing"

    assert fig["data"]["tiny-16"]["made"] and fig["data"]["tiny-16"]["images"] > 0
    probe = fig["train_step"]["tiny"]["per_resolution"]
    assert set(probe) == {"4", "8", "16"} and all(p["s_per_step"] > 0 for p in probe.values())

    tiny_stages = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())["train"]["stages"]
    runs = fig["runs"]
    assert list(runs) == ["tiny", "tinyx2"]
    # x2: every stage's steps, fade and decay doubled; resolutions kept
    assert [st["steps"] for st in runs["tinyx2"]["stages"]] == [2 * st["steps"] for st in tiny_stages]
    assert [st.get("decay_steps", 0) for st in runs["tinyx2"]["stages"]] == [
        2 * st.get("decay_steps", 0) for st in tiny_stages
    ]
    for name, run in runs.items():
        assert run["train_s"] > 0
        m = run["evaluate"]["metrics"]
        for key in ("expr_acc", "id_top1", "ssim_truth", "ssim_changed"):
            assert 0.0 <= m[key] <= 1.0, (name, key)
        assert run["evaluate"]["step"] == sum(st["steps"] for st in run["stages"])
        render = run["render"]
        assert render["resolution"] == 16 and render["fp32_images_per_s"] > 0
        if env_fig["bf16_native"]:
            assert render["bf16_images_per_s"] > 0
        exp = run["export"]
        assert exp["in_out"] and exp["float16_tensors"] > 0
        release = torch.load(out / f"{name}.pt", map_location="cpu", weights_only=True)
        assert release["release_of"] == "final.pt" and "generator_ema" in release["nets"]
    # One full generation per resolution: both runs are 16 px, so the first only.
    gen = runs["tiny"]["generate"]
    assert "generate" not in runs["tinyx2"]
    assert gen["status"] in ("published", "rejected") and gen["images"] > 0
    assert gen["images_per_s"] > 0 and gen["images_per_s_with_start"] > 0
    assert {"fid", "kid_mean", "pass_rate", "usefulness_ratio"} <= set(gen["gates"])

    files = [p for p in out.rglob("*") if p.is_file()]
    assert sorted(p.name for p in files) == ["figures.json", "gpu_run.log", "tiny.pt", "tinyx2.pt"]
    assert len(files) <= 8 and max(p.stat().st_size for p in files) <= 16 * MiB
    assert sum(p.stat().st_size for p in files) <= 64 * MiB
    assert fig["out_limits"]["ok"]


def _script_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_run", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gpu_run"] = mod  # dataclasses look their module up while the class is made
    spec.loader.exec_module(mod)
    return mod


def test_run_names_stretch_a_recipe_and_an_oversized_export_stays_out_of_the_output(tmp_path: Path) -> None:
    g = _script_module()
    spec = g.RunSpec.parse("cpu-64x16")
    assert spec.base == REPO / "configs" / "cpu-64.yaml" and spec.scale == 16
    assert g.RunSpec.parse("gpu-128").scale == 1
    with pytest.raises(argparse.ArgumentTypeError, match=r"no configs/nothing\.yaml"):
        g.RunSpec.parse("nothing")
    stages = [{"resolution": 8, "steps": 3, "fade_steps": 1, "decay_steps": 1, "batch_size": 32}]
    assert g.scaled_stages(stages, 4) == [
        {"resolution": 8, "steps": 12, "fade_steps": 4, "decay_steps": 4, "batch_size": 32}
    ]

    out = tmp_path / "out"
    out.mkdir()
    (out / "figures.json").write_text("{}")
    big, small = tmp_path / "big.pt", tmp_path / "small.pt"
    big.write_bytes(b"\0" * (16 * MiB + 1))
    small.write_bytes(b"\0" * 10)
    assert g.admit_to_out(out, big) == big  # over 16 MiB: left in the work folder
    assert g.admit_to_out(out, small) == out / "small.pt"
    for i in range(5):  # 6 exports + figures + log = 8 files: a seventh export stays out
        (out / f"e{i}.pt").write_bytes(b"\0")
    extra = tmp_path / "extra.pt"
    extra.write_bytes(b"\0")
    assert g.admit_to_out(out, extra) == extra
    assert g.out_limits(out)["ok"]

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

    runs = fig["runs"]
    assert list(runs) == ["tiny"]
    run = runs["tiny"]
    recipe = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())["train"]["stages"]
    assert [(st["resolution"], st["steps"]) for st in run["stages"]] == [
        (st["resolution"], st["steps"]) for st in recipe
    ]
    assert run["train_s"] > 0 and run["predicted_gan_s"] > 0 and fig["train_overhead_s"] >= 0
    m = run["evaluate"]["metrics"]
    for key in ("expr_acc", "id_top1", "ssim_truth", "ssim_changed"):
        assert 0.0 <= m[key] <= 1.0, key
    assert run["evaluate"]["step"] == sum(st["steps"] for st in run["stages"])
    render = run["render"]
    assert render["resolution"] == 16 and render["fp32_images_per_s"] > 0
    if env_fig["bf16_native"]:
        assert render["bf16_images_per_s"] > 0
    exp = run["export"]
    assert exp["in_out"] and exp["float16_tensors"] > 0
    release = torch.load(out / "tiny.pt", map_location="cpu", weights_only=True)
    assert release["release_of"] == "final.pt" and "generator_ema" in release["nets"]
    gen = run["generate"]
    assert gen["status"] in ("published", "rejected") and gen["images"] > 0
    assert gen["images_per_s"] > 0 and gen["images_per_s_with_start"] > 0
    assert {"fid", "kid_mean", "pass_rate", "usefulness_ratio"} <= set(gen["gates"])

    files = [p for p in out.rglob("*") if p.is_file()]
    assert sorted(p.name for p in files) == ["figures.json", "gpu_run.log", "tiny.pt"]
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


def test_a_second_run_is_stretched_predicted_from_the_first_and_a_failed_step_does_not_stop_the_session(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    g = _script_module()
    probe = {
        "precision": "float32",
        "per_resolution": {"4": {"s_per_step": 0.01}, "8": {"s_per_step": 0.02}, "16": {"s_per_step": 0.04}},
    }
    made: list[str] = []
    trained: list[str] = []

    def fake_train(s, spec, cfg_path):
        trained.append(spec.name)
        return {"checkpoint": str(tmp_path / f"{spec.name}.pt"), "train_s": 100.0}

    def fake_evaluate(s, spec, ckpt):
        if spec.name == "tinyx2":
            raise g.StepFailed("exit code 2; log tail: boom")
        return {"step": 1, "metrics": {}}

    monkeypatch.setattr(
        g,
        "environment",
        lambda device: {
            "torch": "x",
            "torch_cuda": None,
            "device": "cpu",
            "bf16_native": False,
            "torch_compile": {"used": False},
            "packages": {},
            "fid_weights": "-",
        },
    )
    monkeypatch.setattr(g, "make_data", lambda s, p, root: made.append(root.name) or {"made": True})
    monkeypatch.setattr(g, "probe_train_steps", lambda s, p: probe)
    monkeypatch.setattr(g, "train", fake_train)
    monkeypatch.setattr(g, "evaluate", fake_evaluate)
    monkeypatch.setattr(g, "export_half", lambda s, spec, ckpt: {"in_out": False})
    monkeypatch.setattr(g, "time_generator", lambda s, ckpt: {"resolution": 16})
    monkeypatch.setattr(g, "time_generate", lambda s, spec, ckpt: {"status": "published"})
    out = tmp_path / "out"
    out.mkdir()
    s = g.Session(out, tmp_path / "work", g.TINY, "cpu", budget_s=900.0)
    specs = [g.RunSpec.parse("tiny"), g.RunSpec.parse("tinyx2")]

    assert g.session(s, specs, tmp_path / "data") == 1  # the failed evaluation, and nothing else
    fig = json.loads((out / "figures.json").read_text())
    assert made == ["tiny-16"] and trained == ["tiny", "tinyx2"]  # one dataset and one probe for both runs
    tiny_stages = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())["train"]["stages"]
    x2 = fig["runs"]["tinyx2"]["stages"]
    assert [st["steps"] for st in x2] == [2 * st["steps"] for st in tiny_stages]
    assert [st.get("decay_steps", 0) for st in x2] == [2 * st.get("decay_steps", 0) for st in tiny_stages]
    assert [st["resolution"] for st in x2] == [st["resolution"] for st in tiny_stages]
    # The first run is predicted with the mode's guess at the overhead, the second with what the first measured.
    steps = {st["name"]: st for st in fig["steps"]}
    gan = [g.predict_train_s(fig["runs"][n]["stages"], probe, 0.0) for n in ("tiny", "tinyx2")]
    overhead = 100.0 - gan[0]  # what the first run took beyond its GAN steps
    assert fig["train_overhead_s"] == pytest.approx(100.0 - gan[1], abs=0.1)  # the latest run's measure
    assert steps["train tiny"]["predicted_s"] == pytest.approx(
        gan[0] + g.TINY.train_overhead_s + g.TINY.after_train_s, abs=0.1
    )
    assert steps["train tinyx2"]["predicted_s"] == pytest.approx(gan[1] + overhead + g.TINY.after_train_s, abs=0.1)
    # One generation per resolution; a failed evaluation is recorded and the run's other steps still run.
    assert "generate tiny" in steps and "generate tinyx2" not in steps
    assert steps["evaluate tinyx2"]["status"] == "failed" and "boom" in steps["evaluate tinyx2"]["error"]
    assert steps["export tinyx2"]["status"] == "ok" and "evaluate" not in fig["runs"]["tinyx2"]

    # A run predicted not to fit the time left is skipped with its prediction, not started.
    s2 = g.Session(tmp_path / "out2", tmp_path / "work2", g.TINY, "cpu", budget_s=1.0)
    s2.out.mkdir()
    trained.clear()
    g.session(s2, specs[:1], tmp_path / "data")
    rec = {st["name"]: st for st in json.loads((s2.out / "figures.json").read_text())["steps"]}
    assert trained == [] and rec["train tiny"]["status"] == "skipped" and "predicted" in rec["train tiny"]["reason"]

"""`fersynth generate` and `fersynth demo` on a tiny checkpoint (the committed cpu-64 one is not needed)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from fast_settings import FAST_USEFULNESS
from typer.testing import CliRunner

import pipeline.generate.checks as checks_mod
from pipeline.audit import audit_dataset
from pipeline.cli import app

FAST = [
    "generate.fid_max_images=8",
    "generate.report_max_images=16",
    "quality.kid_subsets=10",
    "generate.batch_size=16",
]


def _sets(*extra: str) -> list[str]:
    out: list[str] = []
    for s in [*FAST, *extra]:
        out += ["--set", s]
    return out


def test_generate_command_reports_a_rejection(tiny: Path, tmp_path: Path, fid_weights: Path) -> None:
    ckpt = tiny
    args = ["generate", "--checkpoint", str(ckpt), "--out", str(tmp_path), "--name", "ds", *_sets()]
    res = CliRunner().invoke(app, [*args, "--set", f"quality.fid_weights={fid_weights}"])
    assert res.exit_code == 1, res.output
    assert "REJECTED ds: 42 images" in res.output
    assert "kid_mean" in res.output and "kept in staging" in res.output
    assert (tmp_path / ".staging" / "ds" / "REJECTED").is_file()
    bad = CliRunner().invoke(app, [*args, "--set", "generate.expressions=[joy]"])
    assert bad.exit_code == 2 and "unknown expression" in bad.output


def test_demo_makes_missing_data_and_publishes(
    tiny: Path, tmp_path: Path, fid_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ckpt, data = tiny, tiny.parents[2] / "data"
    shutil.rmtree(data)  # demo must make it again, identical to what the checkpoint was trained on
    monkeypatch.setenv("FERSYNTH_FID_WEIGHTS", str(fid_weights))

    def ideal(classifier, images, target_idx, threshold=0.5, batch_size=64, device="auto"):
        t = np.asarray(target_idx)
        return t, np.full(len(t), 0.9), np.ones(len(t), bool)

    monkeypatch.setattr(checks_mod, "expression_scores", ideal)  # the tiny GAN cannot pass on its own
    lenient = _sets(
        "quality.embedder_identity_threshold=-1.0",
        "quality.ssim_floor=-1.0",
        "quality.kid_ceiling=100.0",
        "quality.pass_rate_floor=0.0",
        "quality.usefulness_floor=0.0",
        *FAST_USEFULNESS,
        "generate.n_novel=2",
    )
    res = CliRunner().invoke(app, ["demo", "--checkpoint", str(ckpt), "--out", str(tmp_path), *lenient])
    assert res.exit_code == 0, res.output
    assert "making the procedural dataset" in res.output and (data / "labels.parquet").is_file()
    assert "published demo" in res.output and "next:" in res.output
    assert audit_dataset(tmp_path / "demo").ok


def test_missing_fid_weights_stop_generation_before_rendering(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pipeline.quality.fid as fq

    for var in ("FERSYNTH_WEIGHTS_DIR", "FERSYNTH_FID_WEIGHTS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    def offline(*args: object, **kw: object) -> None:
        raise ConnectionError("no network")

    monkeypatch.setattr(fq, "_TorchmetricsDefaultFeatures", offline)
    ckpt = tiny
    res = CliRunner().invoke(app, ["demo", "--checkpoint", str(ckpt), "--out", str(tmp_path / "out"), *_sets()])
    assert res.exit_code == 2, res.output
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]  # the rest is the progress bar
    assert len(errors) == 1 and errors[0].startswith("error: FID Inception"), res.output
    assert "fid_inception_v3_torchscript.pt" in errors[0] and "FERSYNTH_WEIGHTS_DIR" in errors[0]
    assert not (tmp_path / "out").exists()  # nothing planned or rendered

"""Calibration, per-image flags, dataset gates and the written report."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from scipy.stats import norm

from pipeline.calibration import (
    calibrate_expression_threshold,
    calibrate_expression_thresholds,
    calibrate_identity_threshold,
)
from pipeline.config import ConfigError, QualityConfig, load_config
from pipeline.quality.gates import evaluate_gates, per_image_flags
from pipeline.quality.report import write_quality_report


def test_identity_eer_on_known_distributions() -> None:
    rng = np.random.default_rng(0)
    # same ~ N(0.7, 0.1), diff ~ N(0.3, 0.1): EER at the midpoint 0.5, EER = Phi(-2) = 0.0228.
    same, diff = rng.normal(0.7, 0.1, 20000), rng.normal(0.3, 0.1, 20000)
    thr, eer = calibrate_identity_threshold(same, diff)
    assert thr == pytest.approx(0.5, abs=0.01)
    assert eer == pytest.approx(norm.cdf(-2.0), abs=0.003)
    # unequal spreads: EER where (0.8 - t)/0.05 = (t - 0.2)/0.15 -> t = 0.65, EER = Phi(-3)
    thr, eer = calibrate_identity_threshold(rng.normal(0.8, 0.05, 20000), rng.normal(0.2, 0.15, 20000))
    assert thr == pytest.approx(0.65, abs=0.01) and eer == pytest.approx(norm.cdf(-3.0), abs=0.002)
    # separable: threshold in the gap, EER 0
    thr, eer = calibrate_identity_threshold([0.9, 0.95], [0.1, 0.3])
    assert eer == 0.0 and 0.3 < thr < 0.9
    with pytest.raises(ValueError, match="same and different"):
        calibrate_identity_threshold([], [0.1])
    with pytest.raises(ValueError, match="NaN"):
        calibrate_identity_threshold([0.9, np.nan], [0.1])


def test_expression_threshold_rule() -> None:
    p = np.array([0.95, 0.9, 0.8, 0.7, 0.6, 0.55, 0.5, 0.45, 0.4, 0.3, 0.2])
    correct = np.array([1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0], dtype=bool)
    t = calibrate_expression_threshold(p, correct, keep=0.9)
    kept = (p[correct] >= t).mean()
    assert kept >= 0.9 and t == pytest.approx(0.4)
    with pytest.raises(ValueError, match="no correctly classified"):
        calibrate_expression_threshold([0.1], [False])


def test_per_class_thresholds_hold_each_class_to_its_own_real_faces() -> None:
    # Class 0 is recognised less surely (like neutral): one pooled threshold, set by class 1, fails
    # most of class 0's correct real images; per class, each keeps 95% of its own.
    rng = np.random.default_rng(0)
    p = np.concatenate([rng.uniform(0.5, 0.9, 60), rng.uniform(0.95, 1.0, 1000), rng.uniform(0.5, 1.0, 10)])
    y = np.repeat([0, 1, 2], [60, 1000, 10])
    ok = np.ones(len(p), dtype=bool)
    pooled = calibrate_expression_threshold(p, ok)
    per = calibrate_expression_thresholds(p, ok, y, ("neutral", "happy", "sad"), min_images=20)
    assert (p[y == 0] >= pooled).mean() < 0.5
    assert set(per) == {"neutral", "happy"}  # 10 correct "sad" images are too few: pooled for them
    for k, name in enumerate(("neutral", "happy")):
        assert 0.95 <= (p[y == k] >= per[name]).mean() < 0.97
    with pytest.raises(ValueError, match="differ in length"):
        calibrate_expression_thresholds(p, ok, y[:-1], ("neutral", "happy", "sad"))

    # Flags read each row's own class threshold; classes not listed use the pooled one.
    cfg = QualityConfig(expression_threshold=0.8, expression_thresholds={"happy": 0.6})
    df = _scored(n_per=2, labels=("happy", "sad"))
    df["expression_p_target"] = 0.7
    flags = per_image_flags(df, cfg)
    assert flags.groupby("expression")["expression_pass"].all().to_dict() == {"happy": True, "sad": False}
    by_index = per_image_flags(df.drop(columns="expression"), cfg)  # the label from the target index
    assert by_index["expression_pass"].tolist() == [False, False, True, True]  # indices 0, 1: neutral, happy
    assert cfg.expression_threshold_for("neutral") == 0.8
    with pytest.raises(ConfigError, match="unknown expression"):
        load_config(overrides=["quality.expression_thresholds={joy: 0.5}"])


def _scored(n_per: int = 10, labels: tuple[str, ...] = ("happy", "sad", "anger")) -> pd.DataFrame:
    rows = []
    for k, lab in enumerate(labels):
        for i in range(n_per):
            rows.append(
                {
                    "expression": lab,
                    "expression_idx": k,
                    "expression_pred": k,
                    "expression_p_target": 0.9,
                    "identity_cosine": 0.8,
                    "face_found": True,
                    "ssim": 0.7 if i % 2 else np.nan,  # half the rows have a ground truth
                }
            )
    return pd.DataFrame(rows)


GOOD = {
    "fid": 20.0,
    "kid_mean": 0.01,
    "n_real": 3000,
    "n_fake": 3000,
    "usefulness_ratio": 0.9,
    "usefulness_accuracy_synthetic": 0.81,
    "usefulness_accuracy_real": 0.9,
    "usefulness_chance": 0.15,
    "usefulness_n_train": 2000,
    "usefulness_eval_split": "val",
}


def test_per_image_flags_and_passing_dataset() -> None:
    cfg = QualityConfig()
    df = _scored()
    bad = [0, 11, 23, 3]  # one failure per reason, spread over the classes to keep them balanced
    df.loc[bad[0], "identity_cosine"] = np.nan
    df.loc[bad[1], "face_found"] = False
    df.loc[bad[2], "expression_pred"] = 1
    df.loc[bad[3], "ssim"] = 0.1
    flags = per_image_flags(df, cfg)
    assert not flags.loc[bad, "all_pass"].any() and flags["all_pass"].sum() == len(df) - 4
    assert pd.isna(flags.loc[4, "ssim_pass"]) and bool(flags.loc[4, "all_pass"])  # no reference: not judged
    rep = evaluate_gates(flags, GOOD, cfg)
    assert rep.passed, rep.failed_message()
    assert {g.name for g in rep.gates} >= {"pass_rate", "kid_mean", "fid", "class_balance", "ssim_mean"}


def test_gate_failures_name_value_and_threshold() -> None:
    cfg = QualityConfig(fid_ceiling=30.0)
    df = per_image_flags(_scored(), cfg)
    df.loc[df["expression"] == "anger", "all_pass"] = False  # a class vanishes among passing renders
    rep = evaluate_gates(df, {"fid": 45.0, "kid_mean": float("nan"), "n_real": 4000, "n_fake": 4000}, cfg)
    msg = rep.failed_message()
    assert not rep.passed
    assert "fid = 45, required <= 30" in msg
    assert "kid_mean not computed" in msg
    assert "class_balance = inf" in msg and "pass_rate = 0.6667, required >= 0.8" in msg
    assert rep.to_dict()["gates"][0]["name"] == "pass_rate"


def test_small_sets_fid_informational_and_empty_error() -> None:
    cfg = QualityConfig(usefulness=False)
    df = per_image_flags(_scored(), cfg)
    rep = evaluate_gates(df, {"fid": 500.0, "kid_mean": 0.01, "n_real": 100, "n_fake": 30}, cfg)
    fid_gate = next(g for g in rep.gates if g.name == "fid")
    assert not fid_gate.enforced and not fid_gate.passed and "KID gate decides" in fid_gate.note
    assert rep.passed  # KID decides on small sets
    assert evaluate_gates(df, {"kid_mean": 0.2, "n_real": 100, "n_fake": 30}, cfg).passed is False
    missing = evaluate_gates(df, {}, cfg)  # FID/KID never computed: never a silent pass
    assert not missing.passed and "kid_mean not computed" in missing.failed_message()
    with pytest.raises(ValueError, match="empty"):
        evaluate_gates(df.iloc[:0], GOOD, cfg)
    with pytest.raises(ValueError, match="empty"):
        per_image_flags(df.iloc[:0], cfg)


def test_worst_class_kid_gate_holds_each_class_to_its_own_ceiling() -> None:
    cfg = QualityConfig(usefulness=False)
    df = per_image_flags(_scored(), cfg)
    per = [
        {"label": "anger", "n_fake": 40, "kid_mean": 0.06, "kid_threshold": 0.08},  # noisy small class: within
        {"label": "happy", "n_fake": 400, "kid_mean": 0.04, "kid_threshold": 0.055},
        {"label": "sad", "n_fake": 400, "kid_mean": 0.07, "kid_threshold": 0.055},  # over its own
    ]
    rep = evaluate_gates(df, {**GOOD, "fid_per_expression": per}, cfg)
    gate = next(g for g in rep.gates if g.name == "kid_worst_class")
    assert not gate.passed and gate.value == 0.07 and gate.note.startswith("sad")
    per[2]["kid_mean"] = 0.05
    assert evaluate_gates(df, {**GOOD, "fid_per_expression": per}, cfg).passed
    per[1]["kid_mean"] = None  # a class whose KID could not be computed: never a silent pass
    rep = evaluate_gates(df, {**GOOD, "fid_per_expression": per}, cfg)
    assert not rep.passed and "kid_worst_class not computed: no KID for happy" in rep.failed_message()


def test_quality_config_fields() -> None:
    cfg = load_config(overrides=["quality.identity_threshold=0.6", "quality.identity_backend=facenet"])
    assert cfg.quality.identity_threshold == 0.6 and cfg.quality.min_fid_images == 2048
    with pytest.raises(ConfigError, match=r"quality\.unknown"):
        load_config(overrides=["quality.unknown=1"])
    with pytest.raises(ConfigError, match=r"quality\.identity_backend"):
        load_config(overrides=["quality.identity_backend=arcface"])


def test_report_written(tmp_path: Path) -> None:
    cfg = QualityConfig(expression_thresholds={"happy": 0.5})
    rng = np.random.default_rng(0)
    df = _scored(n_per=8)
    df["identity_cosine"] = rng.uniform(0.2, 1.0, len(df))
    df["expression_p_target"] = rng.uniform(0.1, 1.0, len(df))
    df.loc[5, "identity_cosine"] = np.nan  # a no-face render ranks worst
    df = per_image_flags(df, cfg)
    rep = evaluate_gates(df, {"fid": 80.0, "kid_mean": 0.02, "n_real": 24, "n_fake": 24}, cfg)
    # Renders whose colour encodes their score, so the grids are easy to eyeball.
    score = np.nan_to_num((df["identity_cosine"] + df["expression_p_target"]).to_numpy() / 2, nan=0.0)
    imgs = np.zeros((len(df), 32, 32, 3), dtype=np.uint8)
    imgs[..., 1] = (score * 255).astype(np.uint8)[:, None, None]
    imgs[..., 0] = 255 - imgs[..., 1]
    per_expr = pd.DataFrame(
        {"label": ["anger", "happy", "sad"], "n_real": 8, "n_fake": 8, "fid": [90.0, 70.0, math.nan],
         "kid_mean": [0.02, 0.01, math.nan], "kid_std": 0.001, "fid_reliable": False, "note": ""}
    )  # fmt: skip
    conf = np.eye(7, dtype=int).tolist()
    useful = {"usefulness_confusion_synthetic": conf, "usefulness_confusion_real": conf}
    useful |= {"usefulness_accuracy_synthetic": 0.2, "usefulness_accuracy_real": 0.7}
    paths = write_quality_report(tmp_path, rep, df, per_expr, images=imgs, cfg=cfg, n_grid=8, usefulness=useful)
    assert set(paths) == {
        "identity_hist",
        "expression_hist",
        "best_grid",
        "worst_grid",
        "usefulness_confusion",
        "report",
    }
    assert all(p.is_file() and p.parent == tmp_path / "quality_report" for p in paths.values())
    md = paths["report"].read_text()
    assert md.startswith("# Quality report\n")
    assert "REJECTED" in md and "pass_rate" in md and "| anger |" in md and "![Worst renders](worst.png)" in md
    assert "NaN" not in md and "not computed" in md  # the usefulness gate's figures were not handed to the gates
    assert "(usefulness_confusion.png)" in md
    for key in ("identity_hist", "best_grid"):
        with Image.open(paths[key]) as im:
            assert im.format == "PNG" and im.size[0] > 100
    assert not list((tmp_path / "quality_report").glob(".tmp-*"))


def test_leave_one_out_scores_never_compare_an_image_with_itself() -> None:
    from pipeline.calibration import leave_one_out_scores

    e = torch.nn.functional.normalize(
        torch.tensor([[1.0, 0.0], [1.0, 0.2], [0.0, 1.0], [0.1, 1.0], [0.0, -1.0]]), dim=1
    )
    ids = torch.tensor([0, 0, 1, 1, 2])  # identity 2 has one image: no "same" score for it
    same, diff = leave_one_out_scores(e, ids)
    # Each image of a pair against the other one (its leave-one-out prototype), never 1.0 against itself.
    torch.testing.assert_close(same, (e[[1, 0, 3, 2]] * e[:4]).sum(1).double())
    assert diff.shape == (5 * 2,)  # every image against the two other identities' prototypes
    assert float(same.min()) > float(diff.max())


def test_calibrated_per_class_thresholds_apply_unless_a_threshold_is_fixed() -> None:
    from pipeline.calibration import apply_calibration

    cal = {
        "expression_threshold": 0.9,
        "embedder_identity_threshold": 0.4,
        "expression_thresholds": {"neutral": 0.7, "happy": 0.95},
    }

    records = []

    def resolved(*overrides: str, calibration: dict = cal) -> QualityConfig:
        cfg = load_config(overrides=list(overrides))
        explicit = {o.split("=")[0].removeprefix("quality.") for o in overrides} | {"identity_threshold"}
        records.append(apply_calibration(cfg, {"calibration": calibration}, explicit))
        return cfg.quality

    q = resolved()
    assert q.expression_thresholds == {"neutral": 0.7, "happy": 0.95} and q.expression_threshold_for("sad") == 0.9
    assert "expression_thresholds" in records[-1]["checkpoint"]["applied"]
    assert resolved("quality.expression_calibration=pooled").expression_thresholds == {}
    fixed = resolved("quality.expression_threshold=0.8")  # one number asked for: it holds for every class
    assert fixed.expression_thresholds == {} and fixed.expression_threshold == 0.8
    # A checkpoint calibrated before per-class thresholds existed: the pooled one for every class.
    older = resolved(calibration={k: v for k, v in cal.items() if k != "expression_thresholds"})
    assert older.expression_thresholds == {} and older.expression_threshold == 0.9


def test_the_thresholds_keep_what_they_were_calibrated_to_keep_and_another_keep_asks_for_recalibration() -> None:
    from pipeline.calibration import LEGACY_EXPRESSION_KEEP, apply_calibration

    records = []

    def resolved(cal: dict, *overrides: str) -> QualityConfig:
        cfg = load_config(overrides=list(overrides))
        explicit = {o.split("=")[0].removeprefix("quality.") for o in overrides} | {"identity_threshold"}
        records.append(apply_calibration(cfg, {"calibration": cal}, explicit))
        return cfg.quality

    cal = {"expression_threshold": 0.9, "embedder_identity_threshold": 0.4, "expression_keep": 0.99}
    q = resolved(cal)
    assert q.expression_keep == 0.99 and records[-1]["checkpoint"]["expression_keep"] == 0.99
    assert resolved(cal, "quality.expression_keep=0.99").expression_threshold == 0.9
    # Before the setting existed, calibration kept 95%: the card must say so, not today's default.
    older = {k: v for k, v in cal.items() if k != "expression_keep"}
    assert resolved(older).expression_keep == LEGACY_EXPRESSION_KEEP
    with pytest.raises(
        ConfigError, match=r"quality.expression_keep=0.9: .* calibrated at 0.99; recalibrate: fersynth export"
    ):
        resolved(cal, "quality.expression_keep=0.9")

"""The usefulness gate: a recogniser trained on the renders, tested on real validation faces."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REPO
from PIL import Image

from pipeline.config import ConfigError, QualityConfig, load_config
from pipeline.quality import usefulness as U
from pipeline.quality.gates import evaluate_gates, per_image_flags

SETTINGS = U.UsefulnessSettings(
    max_images=400, max_eval_images=300, steps=60, batch_size=32, eval_split="val", train_split="train", seed=0
)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pipeline.procedural.dataset import make_dataset

    root = tmp_path_factory.mktemp("useful") / "data"
    cfg = load_config(
        REPO / "configs" / "tiny.yaml",
        [f"data.root={root}", "procedural.n_identities=60", "procedural.resolution=32"],
    )
    make_dataset(cfg.procedural, root, workers=1)
    return root


def _renders_from_real(data: Path, out: Path, shuffle_labels: bool) -> pd.DataFrame:
    """A 'dataset' whose renders are real training photos: labelled truly, or with labels permuted."""
    labels = pd.read_parquet(data / "labels.parquet")
    train = labels[labels["split"] == "train"].reset_index(drop=True)
    y = train["expression_index"].to_numpy()
    if shuffle_labels:
        y = np.random.default_rng(1).permutation(y)
    rows = []
    for i, (path, cls) in enumerate(zip(train["path"], y, strict=True)):
        name = f"images/{i:05d}.png"
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        Image.open(data / path).convert("RGB").save(out / name)
        rows.append({"sample_id": f"s{i:05d}", "file_name": name, "expression_index": int(cls), "all_pass": True})
    return pd.DataFrame(rows)


def test_matched_real_rows_copy_the_label_mix_from_the_train_split() -> None:
    frame = pd.DataFrame({"split": ["train"] * 6 + ["val"] * 3, "expression_index": [0, 0, 0, 1, 1, 2, 0, 1, 2]})
    rows = U.matched_real_rows(frame, "train", np.array([0, 0, 1, 2, 2, 2]), seed=0)
    picked = frame.iloc[rows]
    assert (picked["split"] == "train").all()
    # two 0s, one 1, and class 2 only once: the train split has no more
    assert picked["expression_index"].value_counts().to_dict() == {0: 2, 1: 1, 2: 1}


def test_true_renders_teach_as_much_as_real_images_and_shuffled_ones_do_not(data: Path, tmp_path: Path) -> None:
    true = U.measure_usefulness(tmp_path / "a", _renders_from_real(data, tmp_path / "a", False), data, 32, SETTINGS)
    noise = U.measure_usefulness(tmp_path / "b", _renders_from_real(data, tmp_path / "b", True), data, 32, SETTINGS)
    assert true.accuracy_real > 1.5 * true.chance  # the recipe learns at all on this tiny data
    assert true.ratio > 0.8
    assert noise.ratio < 0.6 and noise.accuracy_synthetic < true.accuracy_synthetic
    assert np.asarray(true.confusion_real).sum() == true.n_eval <= SETTINGS.max_eval_images
    assert true.ratios == [true.ratio] and true.ratio_spread == 0.0


def test_several_recognisers_are_averaged_over_their_seeds(data: Path, tmp_path: Path) -> None:
    df = _renders_from_real(data, tmp_path, False)
    s = replace(SETTINGS, max_eval_images=10**6)  # every val image: the test set is the same for all
    one = [U.measure_usefulness(tmp_path, df, data, 32, replace(s, seed=k)) for k in (0, 1)]
    two = U.measure_usefulness(tmp_path, df, data, 32, replace(s, recognisers=2))
    assert two.ratios == pytest.approx([r.ratio for r in one])  # seeds 0 and 1, each as a gate of its own
    assert one[0].accuracy_synthetic != one[1].accuracy_synthetic  # the seed matters: that is why the gate averages
    assert two.ratio == pytest.approx(np.mean(two.ratios))
    assert two.accuracy_synthetic == pytest.approx(np.mean([r.accuracy_synthetic for r in one]))
    assert np.asarray(two.confusion_synthetic).sum() == 2 * two.n_eval  # pooled counts
    assert two.metrics()["usefulness_ratio_spread"] == pytest.approx(abs(one[0].ratio - one[1].ratio))


def test_gate_fails_below_the_floor_and_says_not_computed_when_it_could_not_run() -> None:
    df = per_image_flags(
        pd.DataFrame(
            {"identity_cosine": [0.9] * 14, "expression_p_target": [0.9] * 14, "expression": ["happy", "sad"] * 7}
        ),
        QualityConfig(),
    )
    fid = {"fid": 10.0, "kid_mean": 0.01, "n_real": 100, "n_fake": 100}
    useful = {
        "usefulness_ratio": 0.3,
        "usefulness_accuracy_synthetic": 0.2,
        "usefulness_accuracy_real": 0.66,
        "usefulness_chance": 0.15,
        "usefulness_n_train": 14,
        "usefulness_eval_split": "val",
    }
    rep = evaluate_gates(df, {**fid, **useful}, QualityConfig())
    assert not rep.passed and "usefulness_ratio = 0.3, required >= 0.6" in rep.failed_message()
    several = evaluate_gates(df, {**fid, **useful, "usefulness_ratios": [0.25, 0.35]}, QualityConfig())
    assert "mean of 2 recognisers, ratios 0.250-0.350" in several.failed_message()
    assert evaluate_gates(df, {**fid, **useful, "usefulness_ratio": 0.7}, QualityConfig()).passed
    missing = evaluate_gates(
        df, {**fid, "usefulness_ratio": math.nan, "usefulness_error": "no 'val' split"}, QualityConfig()
    )
    assert not missing.passed and "usefulness_ratio not computed: no 'val' split" in missing.failed_message()
    assert evaluate_gates(df, fid, QualityConfig(usefulness=False)).passed


def test_the_test_split_is_refused() -> None:
    with pytest.raises(ConfigError, match="usefulness_split"):
        load_config(REPO / "configs" / "tiny.yaml", ["quality.usefulness_split=test"])


def test_result_is_cached_per_passing_set(tmp_path: Path) -> None:
    df = pd.DataFrame({"sample_id": ["a", "b", "c"], "all_pass": [True, True, False]})
    key = U.cache_key(df, "data", SETTINGS)
    r = U.UsefulnessResult(0.5, 0.6, 0.5 / 0.6, 0.15, 2, 10, "val", [[1]], [[1]], [0.5 / 0.6])
    U.store_usefulness(tmp_path, key, r)
    assert U.cached_usefulness(tmp_path, key) == r
    df.loc[2, "all_pass"] = True  # a threshold change passes another render: the figures are stale
    assert U.cached_usefulness(tmp_path, U.cache_key(df, "data", SETTINGS)) is None

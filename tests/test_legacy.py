"""Stored configs: the committed checkpoint and configs naming retired options read through one loader."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from conftest import REPO

from pipeline.config import RETIRED_FIELDS, ConfigError, config_to_dict, load_config
from pipeline.core.checkpoint import CheckpointError, load_checkpoint
from pipeline.core.legacy import checkpoint_config, drop_retired, stored_config

COMMITTED = REPO / "checkpoints" / "photo-sphere-64.pt"


def _with_retired(**values: object) -> dict:
    """Today's default config as a dict, plus retired fields at the given values (dotted names)."""
    raw = config_to_dict(load_config())
    for dotted, value in values.items():
        *parents, leaf = dotted.replace("__", ".").split(".")
        node = raw
        for p in parents:
            node = node[p]
        node[leaf] = value
    return raw


def test_committed_checkpoint_config_loads_with_its_recipe() -> None:
    ckpt = load_checkpoint(COMMITTED)
    cfg = checkpoint_config(ckpt, str(COMMITTED))
    m, t = cfg.model, cfg.train
    assert m.edit_mask and m.photo_skips and m.lean_generator and m.code_norm and t.feedback_reads == "codes"
    assert t.balanced_targets and t.judge_soften == 0.5
    # It is the run of the recipe the README names, field for field (only the run folder differs).
    recipe = load_config(REPO / "configs" / "photo-sphere-64.yaml", [f"train.out_dir={t.out_dir}"])
    assert (cfg.model, cfg.train) == (recipe.model, recipe.train)
    # Overrides apply on top of the stored config, as the CLI's --set does.
    assert checkpoint_config(ckpt, "x", ["generate.composite=difference"]).generate.composite == "difference"


def test_every_retired_field_is_dropped_and_has_its_page(caplog: pytest.LogCaptureFixture) -> None:
    raw = _with_retired(**{k.replace(".", "__"): v for k, v in ((k, d) for k, (d, _) in RETIRED_FIELDS.items())})
    clean, dropped = drop_retired(raw)
    assert set(dropped) == set(RETIRED_FIELDS)
    assert "id_spatial_channels" not in clean["model"] and "perceptual" not in clean["train"]["loss"]
    assert "id_spatial_channels" in raw["model"]  # the caller's dict is left as it was
    with caplog.at_level(logging.INFO, logger="pipeline.core.legacy"):
        stored_config(raw, "plan.json")  # all at their "off" values: reads as today's config
    assert "dropped retired config fields" in caplog.text and "train.loss.perceptual" in caplog.text
    for _, page in RETIRED_FIELDS.values():
        assert (REPO / page).is_file(), page


def test_a_retired_option_that_was_on_is_refused_where_it_matters() -> None:
    spatial = json.dumps(_with_retired(model__id_spatial_channels=4))
    with pytest.raises(CheckpointError, match=r"model\.id_spatial_channels=4 .*id_spatial_channels\.md"):
        stored_config(spatial, "old.pt")
    # A training-only option does not change what renders, but a run cannot continue without it.
    perceptual = _with_retired(train__loss__perceptual=2.0)
    assert stored_config(perceptual, "old.pt").train.loss.swap_truth == 0.0
    with pytest.raises(CheckpointError, match=r"cannot be resumed.*train\.loss\.perceptual=2\.0"):
        stored_config(perceptual, "old.pt", resume=True)


def test_a_stored_skip_features_reads_when_off_and_is_refused_when_on() -> None:
    # Checkpoints and dataset cards saved while the skip-fed generator option existed name it, off.
    assert stored_config(json.dumps(_with_retired(model__skip_features=False)), "old.pt") == load_config()
    # On, its generator had layers this version cannot build: one line naming the last commit that can.
    with pytest.raises(CheckpointError) as err:
        stored_config(_with_retired(model__skip_features=True), "skip.pt")
    message = str(err.value)
    assert "\n" not in message
    assert "model.skip_features=True" in message and "skip_fed_generator.md" in message
    assert "skip-fed generators are no longer supported" in message and "e193d4e" in message


def test_a_config_file_naming_a_retired_option_points_at_its_page(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  judge_ensemble: 3\n")
    with pytest.raises(ConfigError, match=r"train\.judge_ensemble: .*docs/experiments/judge_ensemble\.md"):
        load_config(cfg)

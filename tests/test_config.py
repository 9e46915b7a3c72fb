from pathlib import Path

import pytest

from pipeline.config import ConfigError, load_config


def test_defaults_load_and_override_applies() -> None:
    cfg = load_config(overrides=["train.batch_size=16", "procedural.intensities=[0.25, 1.0]"])
    assert cfg.train.batch_size == 16
    assert cfg.procedural.intensities == [0.25, 1.0]


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("procedural.resolution=48", "procedural.resolution"),
        ("train.lr=-1", "train.lr"),
        ("model.backbone=vgg", "model.backbone"),
        ("procedural.expressions=[happy, bored]", "procedural.expressions"),
        ("train.no_such_field=1", "train.no_such_field"),
        ("model.id_spatial_resolution=12", "model.id_spatial_resolution"),
    ],
)
def test_bad_value_names_the_field(override: str, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[override])
    assert field in str(err.value)


def test_yaml_file_and_errors(tmp_path: Path) -> None:
    good = tmp_path / "c.yaml"
    good.write_text("train:\n  batch_size: 8\nmodel:\n  backbone: small\n")
    assert load_config(good).model.backbone == "small"
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_stage_past_model_resolution_is_refused() -> None:
    with pytest.raises(ConfigError, match="max_resolution"):
        load_config(overrides=["model.max_resolution=32"])


def test_spatial_identity_code_width_and_fit() -> None:
    cfg = load_config(overrides=["model.id_dim=64", "model.id_spatial_channels=4", "model.id_spatial_resolution=16"])
    assert cfg.model.id_code_dim == 64 + 4 * 16 * 16
    assert load_config(overrides=["model.id_dim=64"]).model.id_code_dim == 64
    # The map must be at most half the output side (it feeds an upsampling block).
    with pytest.raises(ConfigError, match="id_spatial_resolution 16 must be at most half"):
        load_config(overrides=["model.max_resolution=16", "train.stages=[]", "model.id_spatial_channels=2"])
    # The map-invariance loss has nothing to work on without a map: refused, not silently ignored.
    with pytest.raises(ConfigError, match="map_invariance needs a spatial identity code"):
        load_config(overrides=["train.loss.map_invariance=1"])
    with pytest.raises(ConfigError, match="cross_expression_map needs a spatial identity code"):
        load_config(overrides=["train.cross_expression_map=true"])

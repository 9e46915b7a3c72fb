"""The one weights lookup: setting, env, FERSYNTH_WEIGHTS_DIR, user cache; `fersynth weights` lists it."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.weights import WEIGHTS, WeightsNotFound, find_weight, sha256_of, user_cache_dir

FILE = WEIGHTS["fid"].filename


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var in ("FERSYNTH_WEIGHTS_DIR", "FERSYNTH_FID_WEIGHTS", "FERSYNTH_FACENET_WEIGHTS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path


def _file(path: Path, content: bytes = b"w") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def test_lookup_order_first_hit_wins(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    look = find_weight("fid")
    assert look.path is None
    assert [t.split(" ")[0] for t in look.tried] == [
        "quality.fid_weights",
        "$FERSYNTH_FID_WEIGHTS",
        "$FERSYNTH_WEIGHTS_DIR",
        "user",
    ]

    cache = _file(user_cache_dir() / FILE)
    assert find_weight("fid").path == cache and find_weight("fid").source == "user cache"
    wdir = _file(isolated / "dir" / FILE)
    monkeypatch.setenv("FERSYNTH_WEIGHTS_DIR", str(wdir.parent))
    assert find_weight("fid").path == wdir
    env = _file(isolated / "env.pt")
    monkeypatch.setenv("FERSYNTH_FID_WEIGHTS", str(env))
    assert find_weight("fid").path == env
    explicit = _file(isolated / "explicit.pt")
    assert find_weight("fid", explicit).path == explicit


def test_an_explicit_path_that_points_nowhere_is_an_error(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _file(user_cache_dir() / FILE)
    with pytest.raises(WeightsNotFound, match=r"quality\.fid_weights = .*nope\.pt: file not found"):
        find_weight("fid", isolated / "nope.pt")
    monkeypatch.setenv("FERSYNTH_FID_WEIGHTS", str(isolated / "gone.pt"))
    with pytest.raises(WeightsNotFound, match=r"\$FERSYNTH_FID_WEIGHTS = .*gone\.pt"):
        find_weight("fid")


def test_missing_message_names_every_place_and_the_fix(isolated: Path) -> None:
    msg = find_weight("facenet").missing_message("URLError: offline")
    assert "\n" not in msg
    for part in (
        "quality.facenet_weights (not set)",
        "$FERSYNTH_FACENET_WEIGHTS (not set)",
        str(user_cache_dir()),
        "download (URLError: offline)",
        "docs/weights.md",
    ):
        assert part in msg


def test_weights_command_lists_found_paths_and_sha256(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fid = _file(isolated / "w" / FILE, b"not really inception")
    monkeypatch.setenv("FERSYNTH_WEIGHTS_DIR", str(fid.parent))
    res = CliRunner().invoke(app, ["weights"], env={"COLUMNS": "400"})
    assert res.exit_code == 0, res.output
    flat = " ".join(res.output.split())
    assert sha256_of(fid) in flat and "(not the published file)" in flat
    assert "not found locally" in flat and WEIGHTS["facenet"].filename in flat  # facenet: every place looked

"""The procedural face dataset: factors, AUs, renderer, make_dataset and `fersynth data make`."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from manifests.labels import LABELS_FILE, read_labels
from pipeline.cli import app
from pipeline.config import ConfigError, ProceduralConfig, load_config
from pipeline.expressions import AU_NAMES, EXPRESSIONS
from pipeline.io_utils import sha256_file
from pipeline.procedural import (
    IdentityFactors,
    Nuisance,
    expression_aus,
    render_face,
    render_truth,
    sample_identity,
)
from pipeline.procedural import dataset as ds
from pipeline.procedural.factors import HAIR_STYLES
from pipeline.procedural.nuisance import nuisance_rng
from pipeline.procedural.render import _Face

TINY = {"n_identities": 6, "resolution": 32, "val_fraction": 0.2, "test_fraction": 0.2, "seed": 3}


def tiny_cfg(**kw: object) -> ProceduralConfig:
    return ProceduralConfig(**{**TINY, **kw})


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("proc") / "ds"
    ds.make_dataset(tiny_cfg(), out, workers=1)
    return out


def _lum(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def _plain_face() -> tuple[int, IdentityFactors]:
    """First identity with nothing covering the features (bald, no glasses, no beard)."""
    for i in range(200):
        f = sample_identity(0, i)
        if f.hair_style == "bald" and f.glasses == "none" and f.beard == "none":
            return i, f
    raise AssertionError("no plain identity in the first 200")


# --- factors, AUs, nuisance --------------------------------------------------------------------


def test_identity_factors_deterministic_varied_and_round_trip() -> None:
    assert sample_identity(0, 7) == sample_identity(0, 7)
    assert sample_identity(0, 7) != sample_identity(1, 7)
    faces = [sample_identity(0, i) for i in range(300)]
    assert len({f.to_json() for f in faces}) == 300
    assert {f.hair_style for f in faces} == set(HAIR_STYLES)
    assert {f.glasses for f in faces} >= {"none", "round", "square"}
    assert {f.beard for f in faces} >= {"none", "full"}
    for f in faces[:20]:
        assert IdentityFactors.from_json(f.to_json()) == f
    with pytest.raises(ValueError, match="unknown field"):
        IdentityFactors.from_json('{"wings": 2}')


def test_expression_aus_prototypes_and_scaling() -> None:
    idx = {n.split("_")[0]: i for i, n in enumerate(AU_NAMES)}
    happy = expression_aus("happy", 1.0)
    assert happy.dtype == np.float32 and happy.shape == (12,)
    assert set(np.nonzero(happy)[0]) == {idx["AU6"], idx["AU12"]}
    assert set(np.nonzero(expression_aus("surprise", 1.0))[0]) == {idx[a] for a in ("AU1", "AU2", "AU5", "AU26")}
    assert set(np.nonzero(expression_aus("anger", 1.0))[0]) == {idx[a] for a in ("AU4", "AU5", "AU7", "AU24")}
    assert not expression_aus("neutral", 0.0).any()
    np.testing.assert_allclose(expression_aus("fear", 0.5), expression_aus("fear", 1.0) * 0.5)
    with pytest.raises(ValueError, match="unknown expression"):
        expression_aus("smug", 1.0)
    with pytest.raises(ValueError, match="intensity"):
        expression_aus("sad", 1.5)


def test_nuisance_strength_and_round_trip() -> None:
    n = Nuisance.sample(nuisance_rng(0, 1, "happy", 1.0, 0), 1.0)
    assert Nuisance.from_json(n.to_json()) == n
    assert n != Nuisance.identity() and abs(n.roll_deg) <= 5 and 0.9 <= n.scale <= 1.1
    zero = Nuisance.sample(nuisance_rng(0, 1, "happy", 1.0, 0), 0.0)
    assert zero == Nuisance(noise_seed=zero.noise_seed)
    assert Nuisance.from_json(None) == Nuisance.identity()


# --- renderer ----------------------------------------------------------------------------------


def test_render_is_exact_sized_and_seeded() -> None:
    f = sample_identity(0, 4)
    n = Nuisance.sample(nuisance_rng(0, 4, "fear", 1.0, 0), 1.0)
    aus = expression_aus("fear", 1.0)
    for res in (16, 32, 64, 128):
        a = render_face(f, aus, n, res)
        assert a.shape == (res, res, 3) and a.dtype == np.uint8
    assert np.array_equal(render_face(f, aus, n, 64), render_face(f, aus, n, 64))
    other_noise = Nuisance(**{**n.__dict__, "noise_seed": n.noise_seed + 1})
    assert not np.array_equal(render_face(f, aus, n, 64), render_face(f, aus, other_noise, 64))
    with pytest.raises(ValueError, match="power of two"):
        render_face(f, aus, n, 48)


def test_identities_differ_and_expressions_change_the_face() -> None:
    n0 = Nuisance.identity()
    a, b = sample_identity(0, 0), sample_identity(0, 1)
    neutral = expression_aus("neutral", 0.0)
    assert np.abs(_lum(render_face(a, neutral, n0, 64)) - _lum(render_face(b, neutral, n0, 64))).mean() > 10
    imgs = {e: render_face(a, expression_aus(e, 1.0), n0, 64) for e in EXPRESSIONS}
    for e in EXPRESSIONS[1:]:
        assert np.abs(_lum(imgs[e]) - _lum(imgs["neutral"])).mean() > 1.0, e
    # the confusable pairs must differ clearly too
    assert np.abs(_lum(imgs["fear"]) - _lum(imgs["surprise"])).mean() > 1.0
    assert np.abs(_lum(imgs["anger"]) - _lum(imgs["disgust"])).mean() > 1.0


def test_aus_move_the_features_they_name() -> None:
    """Measured on the image: lip corners, brow height and slant, open mouth, visible eye white."""
    _, f = _plain_face()
    res, ey = 128, 0.45  # eye line of the canonical face
    my = ey + f.nose_length + 0.07
    w0 = f.mouth_width

    def measure(expression: str) -> dict[str, float]:
        aus = expression_aus(expression, 0.0 if expression == "neutral" else 1.0)
        img = render_face(f, aus, Nuisance.identity(), res)
        lum = _lum(img)
        r0, r1 = int((my - 0.05) * res), int((my + 0.12) * res)
        box = lum[r0:r1]

        def darkest_row(dxs: np.ndarray) -> float:
            return float(np.mean([np.argmin(box[:, int((0.5 + d) * res)]) for d in dxs]))

        centre = darkest_row(np.linspace(-0.15 * w0, 0.15 * w0, 3))
        corners = darkest_row(np.concatenate([np.linspace(0.6 * w0, 0.8 * w0, 3), -np.linspace(0.6 * w0, 0.8 * w0, 3)]))
        brow_colour = np.array(_Face(f, aus, 0.0).brow_colour, dtype=np.float64)
        b0, b1 = int((ey - 0.2) * res), int((ey - 0.02) * res)
        inner, outer = [], []
        for side in (-1, 1):
            c_in, c_out = (
                int((0.5 + side * (f.eye_spacing - f.eye_size)) * res),
                int((0.5 + side * (f.eye_spacing + f.eye_size)) * res),
            )
            lo, hi = sorted((c_in, c_out))
            mid = (lo + hi) // 2
            mask = np.linalg.norm(img[b0:b1, lo:hi].astype(np.float64) - brow_colour, axis=2) < 30
            rows, cols = np.nonzero(mask)
            is_inner = (cols + lo < mid) if side == 1 else (cols + lo >= mid)
            inner.extend(rows[is_inner]), outer.extend(rows[~is_inner])
        eyes = img[
            int((ey - 0.06) * res) : int((ey + 0.06) * res),
            int((0.5 - f.eye_spacing - f.eye_size) * res) : int((0.5 + f.eye_spacing + f.eye_size) * res),
        ]
        return {
            "corner_lift": centre - corners,  # > 0: corners above the centre of the mouth
            "brow": float(np.mean(inner + outer)),
            "brow_slant": float(np.mean(outer) - np.mean(inner)),  # > 0: inner ends higher
            "dark_mouth": float((box < 70).sum()),
            "eye_white": float((eyes.min(axis=2) > 200).sum()),
        }

    m = {e: measure(e) for e in EXPRESSIONS}
    assert abs(m["neutral"]["corner_lift"]) < 1.0
    assert m["happy"]["corner_lift"] > 1.5  # AU12 pulls the corners up
    assert m["sad"]["corner_lift"] < -1.5  # AU15 pulls them down
    assert m["surprise"]["brow"] < m["neutral"]["brow"] - 5  # AU1+AU2 raise the brows
    assert m["neutral"]["brow"] - 5 < m["fear"]["brow"] < m["neutral"]["brow"] - 2  # raised less, drawn down by AU4
    assert m["anger"]["brow"] > m["neutral"]["brow"] + 2  # AU4 lowers them
    assert m["anger"]["brow_slant"] < m["neutral"]["brow_slant"] - 1  # inner ends down: a V
    assert m["sad"]["brow_slant"] > m["neutral"]["brow_slant"] + 1  # inner ends up
    assert m["surprise"]["dark_mouth"] > 50 > m["neutral"]["dark_mouth"]  # AU26 opens the jaw
    assert m["surprise"]["eye_white"] > 1.5 * m["neutral"]["eye_white"]  # AU5 shows white above the iris
    assert m["happy"]["eye_white"] < 0.6 * m["neutral"]["eye_white"]  # AU6 squints


# --- make_dataset ------------------------------------------------------------------------------


def test_labels_table_validates_and_matches_files(made: Path) -> None:
    df, meta = read_labels(made)
    assert meta["kind"] == "procedural" and meta["resolution"] == 32 and meta["config"]["seed"] == 3
    per_identity = 1 + 6 * 2  # neutral + 6 expressions x 2 intensities
    assert len(df) == 6 * per_identity and df["identity"].nunique() == 6
    assert set(df["identity"]) == {f"id{i:05d}" for i in range(6)}
    assert (df.loc[df["expression"] == "neutral", "intensity"] == 0).all()
    assert sorted(df.loc[df["expression"] == "happy", "intensity"].unique()) == [0.5, 1.0]
    assert "id00002-happy-050-0" in set(df["sample_id"])
    for _, r in df.sample(8, random_state=0).iterrows():
        p = made / r["path"]
        assert sha256_file(p) == r["sha256"]
        assert Image.open(p).size == (32, 32) and r["width"] == r["height"] == 32
        np.testing.assert_allclose(np.asarray(r["aus"]), expression_aus(r["expression"], r["intensity"]), atol=1e-6)
        assert r["source"] == "procedural" and pd.isna(r["original_path"])
    assert len(list((made / "images").rglob("*.png"))) == len(df)
    sheet = Image.open(made / ds.CONTACT_SHEET)
    assert sheet.width > 7 * 100 and sheet.height > 6 * 100  # 6 identity rows x 7 expression columns


def test_splits_are_disjoint_by_identity(made: Path) -> None:
    df, _ = read_labels(made)
    groups = {s: set(df.loc[df["split"] == s, "identity"]) for s in ("train", "val", "test")}
    assert all(groups.values())
    assert (
        not (groups["train"] & groups["val"])
        and not (groups["train"] & groups["test"])
        and not (groups["val"] & groups["test"])
    )


def test_render_truth_reproduces_dataset_images(made: Path) -> None:
    df, _ = read_labels(made)
    rows = df[df["sample_id"].isin(["id00001-neutral-000-0", "id00004-fear-050-0", "id00005-disgust-100-0"])]
    assert len(rows) == 3
    for _, r in rows.iterrows():
        on_disk = np.asarray(Image.open(made / r["path"]).convert("RGB"))
        truth = render_truth(r["identity_factors"], r["expression"], float(r["intensity"]), r["nuisance"], 32)
        assert np.array_equal(on_disk, truth), r["sample_id"]


def test_same_seed_same_bytes_other_seed_differs(made: Path, tmp_path: Path) -> None:
    ds.make_dataset(tiny_cfg(), tmp_path / "again", workers=2)  # also checks the process pool path
    a, _ = read_labels(made)
    b, _ = read_labels(tmp_path / "again")
    assert a.drop(columns="aus").equals(b.drop(columns="aus"))
    ds.make_dataset(tiny_cfg(seed=4, n_identities=3, expressions=["neutral", "happy"]), tmp_path / "other", workers=1)
    c, _ = read_labels(tmp_path / "other")
    common = a.merge(c, on="sample_id", suffixes=("_a", "_c"))
    assert len(common) == 9 and (common["sha256_a"] != common["sha256_c"]).all()


def test_refuses_foreign_folders_unless_overwrite(made: Path, tmp_path: Path) -> None:
    target = tmp_path / "ds"
    shutil.copytree(made, target)
    with pytest.raises(FileExistsError, match=str(target)):
        ds.make_dataset(tiny_cfg(seed=9), target, workers=1)
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "thesis.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not this dataset"):
        ds.make_dataset(tiny_cfg(), foreign, workers=1)
    ds.make_dataset(tiny_cfg(seed=9, n_identities=3), target, overwrite=True, workers=1)
    df, meta = read_labels(target)
    assert meta["config"]["seed"] == 9 and df["identity"].nunique() == 3
    assert len(list((target / "images").rglob("*.png"))) == len(df)  # old images are gone
    ds.make_dataset(tiny_cfg(n_identities=3), foreign, overwrite=True, workers=1)
    assert (foreign / "thesis.txt").read_text() == "keep me"  # overwrite removes only our own files


def test_resume_renders_only_missing_images(made: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "ds"
    shutil.copytree(made, target)
    before, _ = read_labels(target)
    gone = before["path"].iloc[[0, 5, 40]].tolist()
    for rel in gone:
        (target / rel).unlink()
    (target / LABELS_FILE).unlink()
    kept = target / before["path"].iloc[1]
    kept_mtime = kept.stat().st_mtime_ns

    rendered: list[str] = []
    real = ds._render_item

    def counting(args: tuple) -> tuple[str, str]:
        rendered.append(args[0].rel_path)
        return real(args)

    monkeypatch.setattr(ds, "_render_item", counting)
    ds.make_dataset(tiny_cfg(), target, workers=1)
    assert sorted(rendered) == sorted(gone)
    after, _ = read_labels(target)
    assert after.drop(columns="aus").equals(before.drop(columns="aus"))
    assert kept.stat().st_mtime_ns == kept_mtime


def test_bad_config_values_name_the_field() -> None:
    with pytest.raises(ConfigError, match=r"procedural\.resolution"):
        load_config(overrides=["procedural.resolution=48"])
    with pytest.raises(ConfigError, match=r"procedural\.expressions"):
        load_config(overrides=["procedural.expressions=[happy, smug]"])
    with pytest.raises(ConfigError, match=r"procedural\.n_identities"):
        load_config(overrides=["procedural.n_identities=2"])
    with pytest.raises(ValueError, match=r"procedural\.intensities"):
        ds.plan(tiny_cfg(intensities=[0.5, 0.5]))


def test_cli_data_make_end_to_end(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "cli"
    sets = [
        "--set",
        "procedural.n_identities=4",
        "--set",
        "procedural.resolution=16",
        "--set",
        "procedural.intensities=[1.0]",
    ]
    res = runner.invoke(app, ["data", "make", "--out", str(out), *sets, "--workers", "1"])
    assert res.exit_code == 0, res.output
    assert "made 28 images of 4 identities" in res.output and "contact_sheet.png" in res.output
    df, _ = read_labels(out)
    assert len(df) == 28 and Image.open(io.BytesIO((out / df["path"].iloc[0]).read_bytes())).size == (16, 16)

    res = runner.invoke(app, ["data", "make", "--out", str(out), *sets, "--set", "procedural.seed=5", "--workers", "1"])
    assert res.exit_code == 2 and "--overwrite" in res.output
    res = runner.invoke(
        app, ["data", "make", "--out", str(out), *sets, "--set", "procedural.seed=5", "--overwrite", "--workers", "1"]
    )
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["data", "make", "--out", str(tmp_path / "x"), "--set", "procedural.resolution=20"])
    assert res.exit_code == 2 and "procedural.resolution" in res.output

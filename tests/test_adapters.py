"""Real-dataset adapters: layouts, label mapping, skips and drops, splits, face alignment, CLI.

Only the `photo_import` fixture and one detector check run MTCNN (slow on CPU); the other tests
import with detect=False, which exercises the same listing, labelling, splitting and writing code.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from skimage import data
from typer.testing import CliRunner

from manifests.labels import read_labels
from pipeline.adapters import REPORT_FILE, ImportOptions, ImportSummary, UnknownLabelError, import_dataset
from pipeline.adapters.align import FaceAligner
from pipeline.expressions import EXPRESSIONS
from pipeline.splits import SplitError

# Astronaut's face box in skimage.data.astronaut() (found once with MTCNN): x 181..268, y 62..172.
# FACE is the 256x256 crop astronaut[0:256, 96:352], so there the face spans x 85..172, y 62..172.
FACE = data.astronaut()[0:256, 96:352]
FACE_BOX = (85, 62, 172, 172)
NO_DETECT = ImportOptions(detect=False, val_fraction=0.2, test_fraction=0.2)


def _save(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def _colour(seed: int, size: int = 40) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (size, size, 3), dtype=np.uint8)


def _opts(**kw: object) -> ImportOptions:
    base = {"detect": False, "val_fraction": 0.2, "test_fraction": 0.2}
    base.update(kw)
    return ImportOptions(**base)  # type: ignore[arg-type]


# --- photos through MTCNN ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def photo_import(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, ImportSummary]:
    src = tmp_path_factory.mktemp("photos")
    canvas = np.full((300, 420, 3), 128, np.uint8)
    canvas[30:286, 120:376] = FACE  # face off-centre in a larger photo
    _save(src / "happy" / "p1_a.png", canvas)
    _save(src / "happy" / "p2_a.jpg", np.ascontiguousarray(FACE[:, ::-1]))
    _save(src / "sad" / "p3_a.png", np.asarray(Image.fromarray(FACE).rotate(15, resample=Image.BICUBIC)))
    _save(src / "sad" / "p4_a.png", data.coffee()[:256, :256])  # no face: skipped, counted
    _save(src / "sad" / "p7_a.png", FACE[::32, ::32])  # 8x8, below MTCNN's minimum face: no face
    (src / "sad" / "p5_a.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")  # corrupt: skipped
    _save(src / "contempt" / "p6_a.png", FACE)  # real label without a class: dropped, counted
    out = tmp_path_factory.mktemp("photos-out") / "ds"
    summary = import_dataset(
        "folder", src, out, ImportOptions(identity_regex=r"^(p\d)_", val_fraction=0.2, test_fraction=0.2)
    )
    return src, out, summary


def test_folder_photos_are_aligned_and_skips_counted(photo_import: tuple[Path, Path, ImportSummary]) -> None:
    src, out, s = photo_import
    df, meta = read_labels(out)
    assert len(df) == s.n_images == 3
    assert meta["aligned_with"] == "mtcnn" and meta["crop_size"] == 64 and meta["kind"] == "photos"
    assert meta["layout"] == "folder" and meta["source_root"] == str(src.resolve())
    assert s.skipped == {
        "no_face": [str(src / "sad" / "p4_a.png"), str(src / "sad" / "p7_a.png")],
        "unreadable": [str(src / "sad" / "p5_a.jpg")],
    }
    assert s.dropped == {"contempt": 1} and meta["dropped_labels"] == {"contempt": 1}
    assert s.class_counts["happy"] == 2 and s.class_counts["sad"] == 1
    assert "class 'neutral' has no images after import" in s.warnings
    report = json.loads((out / REPORT_FILE).read_text())
    assert report["n_skipped"] == 3 and report["skipped"] == s.skipped

    aligner = FaceAligner(64)
    for rel in df["path"]:
        crop = Image.open(out / rel)
        assert crop.size == (64, 64) and rel.endswith(".png")
        # The crop really holds a face: MTCNN finds one again, big and centred.
        face = aligner.detect(crop.convert("RGB"))
        assert face is not None, rel
        x0, y0, x1, y1 = face.box
        assert 24 < (x0 + x1) / 2 < 40 and 20 < (y0 + y1) / 2 < 44, face.box
        assert x1 - x0 > 25
        # Eye-levelled, including the source rotated by 15 degrees.
        assert face.left_eye is not None and face.right_eye is not None
        dx, dy = face.right_eye[0] - face.left_eye[0], face.right_eye[1] - face.left_eye[1]
        assert abs(math.degrees(math.atan2(dy, dx))) < 5, rel


def test_detector_box_lies_on_the_known_face() -> None:
    canvas = np.full((300, 420, 3), 128, np.uint8)
    canvas[30:286, 120:376] = FACE
    face = FaceAligner(64).detect(Image.fromarray(canvas))
    assert face is not None and face.prob > 0.95
    cx, cy = (face.box[0] + face.box[2]) / 2, (face.box[1] + face.box[3]) / 2
    x0, y0, x1, y1 = FACE_BOX
    assert 120 + x0 < cx < 120 + x1 and 30 + y0 < cy < 30 + y1


def test_mtcnn_weights_ship_with_the_wheel() -> None:
    import facenet_pytorch

    data_dir = Path(facenet_pytorch.__file__).parent / "data"
    assert all((data_dir / f"{n}.pt").stat().st_size > 10_000 for n in ("pnet", "rnet", "onet"))


# --- layouts without detection -------------------------------------------------------------------


def test_identities_never_span_splits(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for i in range(12):
        for j, exp in enumerate(EXPRESSIONS[:3]):
            _save(src / exp / f"id{i:02d}_{j}.png", _colour(i * 10 + j))
    s = import_dataset("folder", src, tmp_path / "out", _opts(identity_regex=r"^(?P<identity>id\d+)_"))
    df, _ = read_labels(tmp_path / "out")
    assert len(df) == 36 and s.n_identities == 12 and s.splits_from == "identity"
    assert (df.groupby("identity")["split"].nunique() == 1).all()
    assert set(df["split"]) == {"train", "val", "test"}
    assert df.groupby("identity").size().eq(3).all()
    # Pixels are the source (centre-square, 40 -> 64 resize), stored losslessly with their hash.
    row = df.iloc[0]
    assert Image.open(tmp_path / "out" / row["path"]).size == (64, 64)


def test_folder_with_split_and_identity_subfolders(tmp_path: Path) -> None:
    by_split = tmp_path / "by_split"
    for split, n in (("train", 4), ("test", 2)):
        for i in range(n):
            _save(by_split / split / "happy" / f"{split}{i}.png", _colour(i))
    s = import_dataset("folder", by_split, tmp_path / "o1", _opts())
    df, _ = read_labels(tmp_path / "o1")
    assert s.splits_from == "source"
    assert set(df[df["path"].str.contains("test")]["split"]) == {"test"}
    # The source has no val: it is carved from the source's train identities.
    assert (df["split"] == "val").sum() == 1 and (df["split"] == "test").sum() == 2

    by_id = tmp_path / "by_id"
    for person in ("ann", "bob", "cat"):
        for exp in ("sad", "anger"):
            _save(by_id / person / exp / "x.png", _colour(len(person + exp)))
    import_dataset("folder", by_id, tmp_path / "o2", _opts())
    df2, _ = read_labels(tmp_path / "o2")
    assert sorted(df2["identity"].unique()) == ["ann", "bob", "cat"] and len(df2) == 6


def test_unknown_labels_error_names_file_and_value(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for i in range(3):
        _save(src / "happy" / f"h{i}.png", _colour(i))
    _save(src / "bored" / "b0.png", _colour(9))
    with pytest.raises(UnknownLabelError, match=r"bored.b0\.png.*'bored'.*--drop-unknown"):
        import_dataset("folder", src, tmp_path / "out", _opts())
    assert not (tmp_path / "out").exists()  # labels are checked before anything is written
    s = import_dataset("folder", src, tmp_path / "out", _opts(drop_unknown=True))
    assert s.unknown == {"bored": 1} and s.n_images == 3

    csv = tmp_path / "list.csv"
    csv.write_text("file,who,label\nsrc/happy/h0.png,a,happy\nsrc/happy/h1.png,b,grumpy\n")
    with pytest.raises(UnknownLabelError, match=r"list\.csv line 3 \(src/happy/h1\.png\).*'grumpy'"):
        import_dataset(
            "csv", csv, tmp_path / "out2", _opts(path_col="file", identity_col="who", expression_col="label")
        )


def test_csv_layout_counts_missing_and_corrupt_files(tmp_path: Path) -> None:
    imgs = tmp_path / "imgs"
    rows = []
    for i in range(6):
        _save(imgs / f"{i}.png", _colour(i))
        rows.append((f"imgs/{i}.png", f"person{i // 2}", ["Happy", "sadness", "Angry"][i % 3]))
    (imgs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    # A dropped label is never opened, so its file need not exist.
    rows += [
        ("imgs/gone.png", "person9", "happy"),
        ("imgs/broken.png", "person9", "fear"),
        ("imgs/c.png", "p8", "contempt"),
    ]
    csv = tmp_path / "labels.csv"
    pd.DataFrame(rows, columns=["path", "identity", "expression"]).to_csv(csv, index=False)
    s = import_dataset("csv", csv, tmp_path / "out", _opts())
    df, meta = read_labels(tmp_path / "out")
    assert s.n_listed == 9 and s.n_images == 6
    assert s.skipped == {
        "missing": [f"{csv} line 8 (imgs/gone.png)"],
        "unreadable": [f"{csv} line 9 (imgs/broken.png)"],
    }
    assert s.dropped == {"contempt": 1} and meta["skipped_counts"] == {"missing": 1, "unreadable": 1}
    assert sorted(df["expression"].unique()) == ["anger", "happy", "sad"]
    assert set(df["identity"]) == {"person0", "person1", "person2"}
    assert (df.groupby("identity")["split"].nunique() == 1).all()
    assert set(df["original_path"]) == {str(imgs / f"{i}.png") for i in range(6)}


def test_fer2013_keeps_usage_splits_and_resizes(tmp_path: Path) -> None:
    lines = ["emotion,pixels,Usage"]
    usages = ["Training"] * 5 + ["PublicTest", "PrivateTest"]
    for code, usage in zip(range(7), usages, strict=True):
        lines.append(f"{code},{' '.join([str(code * 30)] * 2304)},{usage}")
    lines.append(f"3,{' '.join(['7'] * 100)},Training")  # wrong pixel count: skipped as unreadable
    csv = tmp_path / "fer2013.csv"
    csv.write_text("\n".join(lines) + "\n")
    s = import_dataset("fer2013", csv, tmp_path / "out", ImportOptions(size=64))
    df, meta = read_labels(tmp_path / "out")
    assert meta["kind"] == "fer2013" and meta["aligned_with"] == "none" and s.splits_from == "source"
    assert s.skipped == {"unreadable": [f"{csv} line 9"]}
    assert len(df) == 7 and df["identity"].nunique() == 7
    by_exp = df.set_index("expression")
    assert by_exp.loc["anger", "split"] == "train"  # code 0 Angry, Training
    assert by_exp.loc["disgust", "split"] == "train"
    assert by_exp.loc["surprise", "split"] == "val"  # code 5, PublicTest
    assert by_exp.loc["neutral", "split"] == "test"  # code 6, PrivateTest
    img = np.asarray(Image.open(tmp_path / "out" / by_exp.loc["happy", "path"]))
    assert img.shape == (64, 64, 3) and (img == 90).all()  # code 3 -> gray 90, flat after resize

    csv.write_text("emotion,pixels,Usage\n9,0 0 0 0,Training\n")
    with pytest.raises(UnknownLabelError, match=r"line 2.*'9'"):
        import_dataset("fer2013", csv, tmp_path / "out3", ImportOptions())


def test_rafdb_codes_splits_and_aligned_names(tmp_path: Path) -> None:
    base = tmp_path / "basic"
    labels = base / "EmoLabel" / "list_patition_label.txt"
    labels.parent.mkdir(parents=True)
    entries = [("train_00001.jpg", 4), ("train_00002.jpg", 7), ("train_00003.jpg", 1), ("test_0001.jpg", 5)]
    labels.write_text("".join(f"{n} {c}\n" for n, c in entries))
    for i, (n, _) in enumerate(entries):
        _save(base / "Image" / "aligned" / n.replace(".jpg", "_aligned.jpg"), _colour(i))
    s = import_dataset("rafdb", base, tmp_path / "out", _opts(val_fraction=0.3))
    df, meta = read_labels(tmp_path / "out")
    assert meta["kind"] == "rafdb" and s.n_images == 4
    got = dict(zip(df["original_path"].map(lambda p: Path(p).name), df["expression"], strict=True))
    assert got == {
        "train_00001_aligned.jpg": "happy",
        "train_00002_aligned.jpg": "neutral",
        "train_00003_aligned.jpg": "surprise",
        "test_0001_aligned.jpg": "sad",
    }
    assert df.loc[df["expression"] == "sad", "split"].item() == "test"
    assert (df["split"] == "val").sum() == 1  # carved from the 3 train images


def test_affectnet_drops_unmapped_codes(tmp_path: Path) -> None:
    root = tmp_path / "affectnet"
    rows = []
    for i, code in enumerate([0, 1, 2, 3, 6, 7, 8, 9, 10, 10]):
        rel = f"{i}/img{i}.jpg"
        _save(root / "Manually_Annotated_Images" / rel, _colour(i))
        rows.append({"subDirectory_filePath": rel, "face_x": 0, "expression": code, "valence": 0.1})
    pd.DataFrame(rows).to_csv(root / "training.csv", index=False)
    s = import_dataset("affectnet", root, tmp_path / "out", _opts())
    df, meta = read_labels(tmp_path / "out")
    assert s.dropped == {"contempt": 1, "no-face": 2, "none": 1, "uncertain": 1}
    assert meta["dropped_labels"] == s.dropped
    assert sorted(df["expression"]) == sorted(["neutral", "happy", "sad", "surprise", "anger"])


def test_ckplus_labels_subjects_and_first_frame_neutral(tmp_path: Path) -> None:
    root = tmp_path / "CK+"
    seqs = [("S005", "001", 3), ("S010", "002", 5), ("S011", "001", 2), ("S012", "004", 7)]
    for k, (subj, sess, code) in enumerate(seqs):
        for f in range(1, 4):
            _save(root / "cohn-kanade-images" / subj / sess / f"{subj}_{sess}_{f:08d}.png", _colour(k * 5 + f)[..., 0])
        lf = root / "Emotion" / subj / sess / f"{subj}_{sess}_{3:08d}_emotion.txt"
        lf.parent.mkdir(parents=True)
        lf.write_text(f"   {code:.7e}\n")
    s = import_dataset("ckplus", root, tmp_path / "out", _opts())
    df, _ = read_labels(tmp_path / "out")
    assert s.dropped == {"contempt": 1}
    peaks = df[~df["original_path"].str.endswith("00000001.png")]
    assert dict(zip(peaks["identity"], peaks["expression"], strict=True)) == {
        "S005": "disgust",
        "S010": "happy",
        "S012": "surprise",
    }
    # First frames of all labelled sequences are neutral, including the one whose peak is contempt.
    assert (df["expression"] == "neutral").sum() == 4
    assert (df.groupby("identity")["split"].nunique() == 1).all()


def test_kdef_names_identities_and_poses(tmp_path: Path) -> None:
    root = tmp_path / "KDEF"
    names = ["AF01ANS", "BF01ANS", "AF01HAS", "AM02SUS", "AM02DIHL", "BM03NES", "AF04AFS", "AM05SAFR"]
    for i, n in enumerate(names):
        folder = n[:4]
        _save(root / folder / f"{n}.JPG", _colour(i))
    s = import_dataset("kdef", root, tmp_path / "out", _opts())
    df, _ = read_labels(tmp_path / "out")
    assert s.excluded == {"pose FR": 1, "pose HL": 1}
    assert len(df) == 6
    # Sessions A and B of F01 are one person.
    assert sorted(df.loc[df["identity"] == "F01", "expression"]) == ["anger", "anger", "happy"]
    assert set(df["identity"]) == {"F01", "M02", "M03", "F04"}
    assert set(df["expression"]) == {"anger", "happy", "surprise", "neutral", "fear"}

    _save(root / "extra" / "holiday.jpg", _colour(99))
    with pytest.raises(UnknownLabelError, match=r"holiday\.jpg"):
        import_dataset("kdef", root, tmp_path / "out2", _opts())


def test_unsplittable_identities_is_a_split_error(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for i in range(2):
        _save(src / "happy" / f"same_{i}.png", _colour(i))
    with pytest.raises(SplitError, match="cannot split 1 identity"):
        import_dataset("folder", src, tmp_path / "out", _opts(identity_regex=r"^(same)_"))


def test_output_folder_guard(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for i in range(5):
        _save(a / "happy" / f"{i}.png", _colour(i))
        _save(b / "sad" / f"{i}.png", _colour(i + 50))
    out = tmp_path / "out"
    import_dataset("folder", a, out, _opts())
    import_dataset("folder", a, out, _opts(size=32))  # same source again: replaced in place
    assert read_labels(out)[1]["crop_size"] == 32
    with pytest.raises(FileExistsError, match="--overwrite"):
        import_dataset("folder", b, out, _opts())
    import_dataset("folder", b, out, _opts(overwrite=True))
    df, _ = read_labels(out)
    assert set(df["expression"]) == {"sad"}
    assert sorted(p.parent.name for p in (out / "images").rglob("*.png")) == ["sad"] * 5  # old crops gone

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        import_dataset("folder", a, foreign, _opts())
    with pytest.raises(ValueError, match="overlaps"):
        import_dataset("folder", a, a / "inside", _opts())


def test_cli_import_and_cache(tmp_path: Path) -> None:
    from pipeline.cli import app

    src = tmp_path / "src"
    for i in range(5):
        _save(src / "surprise" / f"{i}.png", _colour(i))
    runner = CliRunner()
    out = tmp_path / "out"
    res = runner.invoke(app, ["data", "import", "folder", str(src), "--out", str(out), "--no-detect", "--size", "32"])
    assert res.exit_code == 0, res.output
    assert "class 'neutral' has no images" in res.output
    df, meta = read_labels(out)
    assert len(df) == 5 and meta["crop_size"] == 32
    res = runner.invoke(app, ["data", "cache", str(out), "--resolution", "16"])
    assert res.exit_code == 0 and "rebuilt (missing)" in res.output, res.output
    res = runner.invoke(app, ["data", "cache", str(out), "--resolution", "16"])
    assert "up to date" in res.output
    res = runner.invoke(app, ["data", "import", "folder", str(src), "--out", str(out), "--size", "48"])
    assert res.exit_code == 2 and "power of two" in res.output

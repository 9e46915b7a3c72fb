"""Generated-dataset manifest: schema, shard writer, finalize, reader, card, and what other tools read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import CKPT, DATASET_META, N_SHARDS, build_dataset, final_meta, make_rows

from manifests.card import CARD_JSON, CARD_MD, CROISSANT
from manifests.reader import filter_manifest, read_dataset_meta, read_manifest
from manifests.schema import (
    COLUMNS,
    DATASET_METADATA_KEY,
    MANIFEST_DIR,
    MANIFEST_SCHEMA_VERSION,
    ManifestError,
)
from manifests.writer import (
    COMMON_METADATA,
    IMAGEFOLDER_METADATA,
    SUCCESS_MARKER,
    finalize,
    shard_is_complete,
    shard_path,
    write_shard,
)
from pipeline.expressions import EXPRESSIONS
from pipeline.io_utils import sha256_file


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    build_dataset(tmp_path)
    return tmp_path


def test_layout_and_readers_agree(dataset: Path) -> None:
    for name in (
        SUCCESS_MARKER,
        IMAGEFOLDER_METADATA,
        CARD_JSON,
        CARD_MD,
        CROISSANT,
        f"{MANIFEST_DIR}/{COMMON_METADATA}",
    ):
        assert (dataset / name).is_file(), name
    ours = read_manifest(dataset)
    assert list(ours.columns) == COLUMNS and len(ours) == 8
    ids = sorted(ours["sample_id"])

    by_pandas = pd.read_parquet(dataset / MANIFEST_DIR)
    by_arrow = ds.dataset(dataset / MANIFEST_DIR, format="parquet").to_table()
    duckdb = pytest.importorskip("duckdb")
    by_duck = duckdb.sql(f"SELECT * FROM read_parquet('{dataset}/{MANIFEST_DIR}/*.parquet')").df()
    imagefolder_view = pd.read_parquet(dataset / IMAGEFOLDER_METADATA)
    for other in (by_pandas, by_arrow.to_pandas(), by_duck, imagefolder_view):
        assert sorted(other["sample_id"]) == ids
    # Nullable columns keep their nulls through every reader.
    assert by_duck["identity_pass"].isna().sum() == 1
    assert sorted(ours["shard"].unique()) == [0, 1]


def test_field_docs_and_dataset_meta_survive(dataset: Path) -> None:
    for path in (
        shard_path(dataset, 0, N_SHARDS),
        dataset / MANIFEST_DIR / COMMON_METADATA,
        dataset / IMAGEFOLDER_METADATA,
    ):
        schema = pq.read_schema(path)
        assert b"sha256" in schema.field("sha256").metadata[b"doc"]
        assert all(b"doc" in (schema.field(c).metadata or {}) for c in COLUMNS)
        meta = json.loads(schema.metadata[DATASET_METADATA_KEY])
        assert meta["schema_version"] == MANIFEST_SCHEMA_VERSION and meta["run_id"] == "run-test"
    assert ds.dataset(dataset / MANIFEST_DIR).schema.field("file_name").metadata[b"doc"]
    # Gates are only known at finalize: they are in the final metadata, not in the shards.
    gates = read_dataset_meta(dataset)["gates"]
    assert [g["name"] for g in gates][:2] == ["pass_rate", "identity_pass_rate"] and "kid_mean" in json.dumps(gates)
    assert "gates" not in json.loads(pq.read_schema(shard_path(dataset, 0, N_SHARDS)).metadata[DATASET_METADATA_KEY])


def test_hugging_face_datasets_reads_it(dataset: Path) -> None:
    datasets = pytest.importorskip("datasets")
    images = datasets.load_dataset("imagefolder", data_dir=str(dataset), split="train")
    assert len(images) == 8 and "image" in images.column_names and "sample_id" in images.column_names
    row = images[0]
    assert row["image"].size == (16, 12)
    inferred = datasets.load_dataset(str(dataset), split="train")  # builder inferred from the PNGs
    assert sorted(inferred["sample_id"]) == sorted(images["sample_id"])
    manifest_labels = read_manifest(dataset, ["sample_id", "expression_index"]).values.tolist()
    for loaded in (images, inferred):  # metadata.parquet's `label`: a ClassLabel in the manifest's order
        assert loaded.features["label"].names == list(EXPRESSIONS)
        assert sorted(zip(loaded["sample_id"], loaded["label"], strict=True)) == sorted(map(tuple, manifest_labels))
    manifest = datasets.load_dataset("parquet", data_files=f"{dataset}/{MANIFEST_DIR}/*.parquet", split="train")
    assert sorted(manifest["sample_id"]) == sorted(images["sample_id"])


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"width": "wide"}, ["'width'", "'wide'"]),
        ({"expression": "smug"}, ["expression", "'smug'"]),
        ({"file_name": "../x.png"}, ["'../x.png'", ".."]),
        ({"identity_source": "real:holdout"}, ["identity_source", "real:holdout"]),
        ({"expression_pass": None}, ["'expression_pass'", "null"]),
        ({"intensity": 1.5}, ["intensity", "outside 0..1"]),
        ({"bogus": 1}, ["unknown column", "bogus"]),
        ({"file_name": "images/real_test/a.png"}, ["'images/real_test/a.png'", "split name"]),
        ({"file_name": "manifest/a.png"}, ["manifest layout"]),
        ({"all_pass": True, "expression_pass": False}, ["all_pass is true"]),
    ],
)
def test_write_shard_names_column_and_value(tmp_path: Path, change: dict[str, Any], words: list[str]) -> None:
    rows = make_rows(tmp_path, 2)
    rows[1].update(change)
    with pytest.raises(ManifestError) as err:
        write_shard(tmp_path, 0, 1, rows, DATASET_META)
    for w in words:
        assert w in str(err.value)
    assert not (tmp_path / MANIFEST_DIR).exists() or not any((tmp_path / MANIFEST_DIR).iterdir())


def test_failed_write_leaves_no_partial_and_keeps_previous(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = make_rows(tmp_path, 4)
    good = write_shard(tmp_path, 0, 1, rows[:2], DATASET_META)
    before = good.read_bytes()

    def boom(self: pq.ParquetWriter, table: pa.Table, row_group_size: int | None = None) -> None:
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(pq.ParquetWriter, "write_table", boom)
    with pytest.raises(OSError, match="simulated"):
        write_shard(tmp_path, 0, 1, rows[2:], DATASET_META)
    assert sorted(p.name for p in (tmp_path / MANIFEST_DIR).iterdir()) == [good.name]
    assert good.read_bytes() == before
    monkeypatch.undo()
    assert shard_is_complete(tmp_path, 0, 1, [r["sample_id"] for r in rows[:2]])


def test_shard_is_complete_detects_damage(tmp_path: Path) -> None:
    rows = build_dataset(tmp_path, finalize_it=False)
    ids0 = [r["sample_id"] for r in rows[:4]]
    assert shard_is_complete(tmp_path, 0, N_SHARDS, reversed(ids0))
    assert not shard_is_complete(tmp_path, 0, N_SHARDS, ids0[:3])  # a different plan
    assert not shard_is_complete(tmp_path, 0, 3, ids0)  # another shard count: other file name

    part = shard_path(tmp_path, 0, N_SHARDS)
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])  # truncated by a crash
    assert not shard_is_complete(tmp_path, 0, N_SHARDS, ids0)
    part.unlink()
    assert not shard_is_complete(tmp_path, 0, N_SHARDS, ids0)

    ids1 = [r["sample_id"] for r in rows[4:]]
    (tmp_path / rows[5]["file_name"]).unlink()
    assert not shard_is_complete(tmp_path, 1, N_SHARDS, ids1)
    assert shard_is_complete(tmp_path, 1, N_SHARDS, ids1, check_files=False)


def test_write_shard_invalidates_success_and_finalize_needs_all_shards(dataset: Path) -> None:
    rows = read_manifest(dataset)
    write_shard(dataset, 1, N_SHARDS, rows[rows["shard"] == 1].drop(columns=["shard"]), DATASET_META)
    assert not (dataset / SUCCESS_MARKER).exists()
    shard_path(dataset, 1, N_SHARDS).unlink()
    with pytest.raises(ManifestError, match=r"missing shard\(s\) \[1\] of 2"):
        finalize(dataset, final_meta(rows.to_dict("records")))


def test_newer_schema_version_is_refused(dataset: Path) -> None:
    part = shard_path(dataset, 1, N_SHARDS)
    table = pq.read_table(part)
    meta = json.loads(table.schema.metadata[DATASET_METADATA_KEY])
    meta["schema_version"] = MANIFEST_SCHEMA_VERSION + 1
    pq.write_table(table.replace_schema_metadata({DATASET_METADATA_KEY: json.dumps(meta).encode()}), part)
    with pytest.raises(ManifestError) as err:
        read_manifest(dataset)
    assert f"version {MANIFEST_SCHEMA_VERSION + 1}" in str(err.value)
    assert f"({MANIFEST_SCHEMA_VERSION})" in str(err.value)


def test_filter_manifest(dataset: Path) -> None:
    df = read_manifest(dataset)
    assert set(filter_manifest(df, identity_source="novel")["identity_source"]) == {"novel"}
    assert len(filter_manifest(df, expression=["happy", "sad"])) == 2
    assert len(filter_manifest(df, identity_pass=None)) == 1
    assert len(filter_manifest(df, "identity_score > 0.7", all_pass=True)) == len(
        df[(df["identity_score"] > 0.7) & df["all_pass"]]
    )
    with pytest.raises(ManifestError, match=r"unknown column\(s\) \['expresion'\]; valid columns: sample_id"):
        filter_manifest(df, expresion="happy")
    with pytest.raises(ManifestError, match="valid columns"):
        filter_manifest(df, "identity_scor > 0.5")


def test_card_contents(dataset: Path) -> None:
    card = json.loads((dataset / CARD_JSON).read_text())
    assert card["stats"]["n_images"] == 8
    assert card["stats"]["counts"]["expression"]["neutral"] == 2
    # Eight rows leave a class with no passing render: the card says the gates failed, and which.
    assert (
        card["gates_passed"] is False and not next(g for g in card["gates"] if g["name"] == "class_balance")["passed"]
    )
    assert card["lineage"]["checkpoint"]["sha256"] == CKPT
    assert set(card["lineage"]["packages"]) >= {
        "torch",
        "torchvision",
        "pyarrow",
        "pandas",
        "prefect",
        "facenet-pytorch",
    }

    md = (dataset / CARD_MD).read_text()
    front = yaml.safe_load(md.split("---\n")[1])
    assert front["task_categories"] == ["image-classification"]
    assert "synthetic" in front["tags"] and front["size_categories"] == ["n<1K"]
    assert "| pass_rate | 0." in md and "| note |" in md
    assert "## Lineage" in md and CKPT in md

    croissant = json.loads((dataset / CROISSANT).read_text())
    objects = [d for d in croissant["distribution"] if d["@type"] == "cr:FileObject"]
    assert [o["sha256"] for o in objects] == [sha256_file(shard_path(dataset, i, N_SHARDS)) for i in range(N_SHARDS)]
    fields = croissant["recordSet"][0]["field"]
    # Every manifest column, then the render itself (read from the images FileSet).
    assert [f["name"] for f in fields] == [*COLUMNS, "image"]
    # The label order once, as an enumeration the manifest's expression_index refers to.
    (labels,) = [r for r in croissant["recordSet"] if r["@id"] == "expressions"]
    assert [(d["expressions/label"], d["expressions/name"]) for d in labels["data"]] == list(enumerate(EXPRESSIONS))
    assert (
        next(f for f in fields if f["name"] == "expression_index")["references"]["field"]["@id"] == "expressions/label"
    )

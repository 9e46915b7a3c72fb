"""The labelled-image table: one format for the procedural dataset and every real-dataset adapter.

A labelled dataset is a folder holding `labels.parquet` (this schema) and the images it names by
relative path. Every later stage (tensor cache, training, evaluation, quality calibration) reads
only this table, so a new adapter only has to produce it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.expressions import AU_NAMES, EXPRESSIONS
from pipeline.io_utils import atomic_path

LABELS_FILE = "labels.parquet"
SCHEMA_VERSION = 1
METADATA_KEY = b"fersynth.labels"
SPLITS = ("train", "val", "test")

LABEL_FIELDS: list[pa.Field] = [
    pa.field("sample_id", pa.string(), nullable=False, metadata={"doc": "stable id of the image within the dataset"}),
    pa.field("path", pa.string(), nullable=False, metadata={"doc": "image path relative to the dataset root (posix)"}),
    pa.field("identity", pa.string(), nullable=False, metadata={"doc": "person / procedural identity id"}),
    pa.field("expression", pa.string(), nullable=False, metadata={"doc": f"one of {', '.join(EXPRESSIONS)}"}),
    pa.field("expression_index", pa.int8(), nullable=False, metadata={"doc": "index into the 7 expressions"}),
    pa.field("intensity", pa.float32(), nullable=True, metadata={"doc": "0..1; null when the source has none"}),
    pa.field("aus", pa.list_(pa.float32()), nullable=True, metadata={"doc": "AU intensities in AU_NAMES order"}),
    pa.field("identity_factors", pa.string(), nullable=True, metadata={"doc": "JSON of procedural identity factors"}),
    pa.field("nuisance", pa.string(), nullable=True, metadata={"doc": "JSON of pose/lighting/noise parameters"}),
    pa.field("split", pa.string(), nullable=False, metadata={"doc": "train / val / test, disjoint by identity"}),
    pa.field("sha256", pa.string(), nullable=False, metadata={"doc": "sha256 of the image file bytes"}),
    pa.field("width", pa.int32(), nullable=False),
    pa.field("height", pa.int32(), nullable=False),
    pa.field("source", pa.string(), nullable=False, metadata={"doc": "procedural, folder, csv, fer2013, rafdb, ..."}),
    pa.field("original_path", pa.string(), nullable=True, metadata={"doc": "where the image came from, if imported"}),
]
LABEL_SCHEMA = pa.schema(LABEL_FIELDS)
COLUMNS = [f.name for f in LABEL_FIELDS]


class LabelsError(ValueError):
    """A labels table that breaks the contract; the message names the file and column."""


def write_labels(root: Path, df: pd.DataFrame, meta: dict[str, Any]) -> Path:
    """Validate `df` and write `<root>/labels.parquet` atomically, with `meta` in the schema metadata."""
    validate_frame(df, source=str(root / LABELS_FILE))
    table = pa.Table.from_pandas(df[COLUMNS], schema=LABEL_SCHEMA, preserve_index=False)
    full_meta = {"schema_version": SCHEMA_VERSION, "expressions": list(EXPRESSIONS), "au_names": list(AU_NAMES)}
    full_meta.update(meta)
    table = table.replace_schema_metadata({METADATA_KEY: json.dumps(full_meta, default=str).encode()})
    out = root / LABELS_FILE
    with atomic_path(out) as tmp:
        pq.write_table(table, tmp)
    return out


def read_labels(root: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Read and validate a labels table; returns (frame, dataset metadata)."""
    path = Path(root) / LABELS_FILE
    if not path.is_file():
        raise LabelsError(f"{path}: no labels table (make one with `fersynth data make` or `fersynth data import`)")
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise LabelsError(f"{path}: cannot read Parquet: {exc}") from exc
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    meta = json.loads(raw) if raw else {}
    version = meta.get("schema_version")
    if version is not None and version > SCHEMA_VERSION:
        raise LabelsError(f"{path}: schema version {version} is newer than this fersynth reads ({SCHEMA_VERSION})")
    df = table.to_pandas()
    validate_frame(df, source=str(path))
    return df, meta


def dataset_kind(df: pd.DataFrame) -> str:
    """'procedural' when every image is the project's own rendering (ground truth exists), else 'photo'."""
    return "procedural" if bool((df["source"] == "procedural").all()) else "photo"


def validate_frame(df: pd.DataFrame, source: str) -> None:
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise LabelsError(f"{source}: missing column(s) {missing}")
    for col in ("sample_id", "path", "identity", "expression", "split", "sha256"):
        if df[col].isna().any():
            raise LabelsError(f"{source}: column {col!r} has empty values (row {int(df[col].isna().idxmax())})")
    bad_expr = sorted(set(df["expression"]) - set(EXPRESSIONS))
    if bad_expr:
        raise LabelsError(f"{source}: column 'expression' has unknown labels {bad_expr}")
    idx_ok = df["expression"].map(EXPRESSIONS.index) == df["expression_index"].astype(int)
    if not idx_ok.all():
        raise LabelsError(f"{source}: 'expression_index' disagrees with 'expression' at row {int((~idx_ok).idxmax())}")
    bad_split = sorted(set(df["split"]) - set(SPLITS))
    if bad_split:
        raise LabelsError(f"{source}: column 'split' has unknown values {bad_split}")
    if df["sample_id"].duplicated().any():
        raise LabelsError(f"{source}: duplicate sample_id {df['sample_id'][df['sample_id'].duplicated()].iloc[0]!r}")
    if df["path"].duplicated().any():
        raise LabelsError(f"{source}: duplicate path {df['path'][df['path'].duplicated()].iloc[0]!r}")
    for p in df["path"]:
        if p.startswith("/") or ".." in Path(p).parts:
            raise LabelsError(f"{source}: path {p!r} is not inside the dataset root")
    per_id = df.groupby("identity")["split"].nunique()
    if (per_id > 1).any():
        raise LabelsError(f"{source}: identity {per_id[per_id > 1].index[0]!r} appears in more than one split")

"""The generated-dataset manifest: one row per rendered image (the data contract of fersynth's output).

Every column is declared once, in `MANIFEST_FIELDS`, with its type, nullability and a "doc" entry in
the field metadata (Parquet keeps field metadata when written with `pq.ParquetWriter`, so the docs
travel with the data). Adding a column later means adding one `pa.field(...)` here and bumping
`MANIFEST_SCHEMA_VERSION`; readers refuse versions newer than they know.

Dataset-level facts (gates, FID/KID, thresholds, lineage) live as JSON under the single namespaced
key `DATASET_METADATA_KEY` in the Arrow schema metadata, the way Hugging Face `datasets` keeps its
own facts under b"huggingface".

Value rules (`row_issues`) are plain functions over a DataFrame so the writer (raises on the first
issues) and the audit (reports all of them) share one definition of "valid".
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.expressions import EXPRESSIONS

MANIFEST_SCHEMA_VERSION = 2  # 2: source_image
DATASET_METADATA_KEY = b"fersynth.dataset"
# Folder of the manifest shards inside a dataset (see manifests.writer for why it is not "data").
MANIFEST_DIR = "manifest"
# Words Hugging Face `datasets` reads as split names when they appear as a token of a path
# (datasets.data_files.SPLIT_KEYWORDS); in an image path they would silently split the dataset.
HF_SPLIT_WORDS = frozenset(
    {"train", "training", "validation", "valid", "dev", "val", "test", "testing", "eval", "evaluation"}
)
SPLITS = ("train", "val", "test")
IDENTITY_SOURCES_DOC = (
    "real:<split> (an identity from the real split <split>), novel (sampled w_id), file (user-given image)"
)


def _f(name: str, type_: pa.DataType, nullable: bool, doc: str) -> pa.Field:
    return pa.field(name, type_, nullable=nullable, metadata={"doc": doc})


# One list of fields: the single place to add a column.
MANIFEST_FIELDS: list[pa.Field] = [
    _f("sample_id", pa.string(), False, "deterministic id from the sweep plan (see make_sample_id); unique"),
    _f("file_name", pa.string(), False, "image path relative to the dataset root, posix (HF ImageFolder column)"),
    _f("sha256", pa.string(), False, "sha256 of the image file bytes, lowercase hex"),
    _f("width", pa.int32(), False, "image width in pixels"),
    _f("height", pa.int32(), False, "image height in pixels"),
    _f("identity_id", pa.string(), False, "identity the render was made for"),
    _f("identity_source", pa.string(), False, IDENTITY_SOURCES_DOC),
    _f(
        "source_image",
        pa.string(),
        True,
        "the training-data photo (its labels `path`) the render starts from: its codes, and its pixels where "
        "the render is drawn over it; null for a render from codes alone (novel identities)",
    ),
    _f("expression", pa.string(), False, f"target expression, one of {', '.join(EXPRESSIONS)}"),
    _f("expression_index", pa.int8(), False, "index of `expression` in the 7 expressions"),
    _f("intensity", pa.float32(), False, "target intensity 0..1 (interpolation from neutral)"),
    _f("nuisance_seed", pa.int64(), False, "seed of pose/lighting/background nuisance"),
    _f("noise_seed", pa.int64(), False, "seed of the generator noise inputs"),
    _f("checkpoint_sha256", pa.string(), False, "sha256 of the generator checkpoint file used to render"),
    _f("checkpoint_step", pa.int64(), False, "training step of that checkpoint"),
    _f("shard", pa.int32(), False, "index of the manifest shard holding this row"),
    _f("run_id", pa.string(), False, "id of the render run (flow run) that made the image"),
    _f(
        "identity_score", pa.float32(), True, "identity preservation: cosine similarity to the source; null if unscored"
    ),
    _f("identity_pass", pa.bool_(), True, "identity_score passed its threshold; null if unscored"),
    _f("expression_pred", pa.string(), False, "expression predicted by the expression classifier"),
    _f("expression_p_target", pa.float32(), False, "classifier probability of the target expression, 0..1"),
    _f("expression_pass", pa.bool_(), False, "expression check passed its threshold"),
    _f("ssim_truth", pa.float32(), True, "SSIM against the ground-truth image; null where no ground truth exists"),
    _f("face_found", pa.bool_(), True, "a face detector found a face; null if not run"),
    _f("all_pass", pa.bool_(), False, "every per-image check that ran passed"),
]
MANIFEST_SCHEMA = pa.schema(MANIFEST_FIELDS)
COLUMNS: list[str] = [f.name for f in MANIFEST_FIELDS]
# The schema version that added a column (the others exist since 1): an older manifest lacks it rightly.
COLUMN_SINCE: dict[str, int] = {"source_image": 2}


def columns_of_version(version: int) -> list[str]:
    """The columns a manifest of schema `version` must have."""
    return [c for c in COLUMNS if COLUMN_SINCE.get(c, 1) <= version]


FIELD_BY_NAME: dict[str, pa.Field] = {f.name: f for f in MANIFEST_FIELDS}

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_SOURCE = re.compile(rf"^(real:({'|'.join(SPLITS)})|novel|file)$")
# Fields whose value must lie in [0, 1] when present.
_UNIT_INTERVAL = ("intensity", "expression_p_target")


class ManifestError(ValueError):
    """A manifest that breaks the contract; the message names the file/column/value at fault."""


# metadata.parquet (the Hugging Face ImageFolder view) and the `hf` export carry one column more than the
# manifest: `label`, the expression index under the name ImageFolder, torchvision and Keras use. ImageFolder
# would otherwise number classes by sorted folder name, and gives no label at all beside a metadata file.
# Nullable int64: the Arrow type of a `datasets.ClassLabel`, which `datasets` only applies to an equal field.
LABEL_COLUMN = "label"
LABEL_FIELD = _f(LABEL_COLUMN, pa.int64(), True, "expression_index again: to Hugging Face datasets a ClassLabel")
# `datasets` reads a Parquet file's features from this schema key: `label` loads as a ClassLabel named in
# the label order (datasets 5.2 ignores README feature declarations for imagefolder).
HF_FEATURES_KEY = b"huggingface"


def label_order(meta: dict[str, Any] | None = None) -> list[str]:
    """The dataset's label order (label i is names[i]): the expressions its JSON records, else today's."""
    return list((meta or {}).get("expressions") or EXPRESSIONS)


def hf_label_metadata(names: Sequence[str]) -> dict[bytes, bytes]:
    """Arrow schema metadata under which `datasets` reads `label` as a ClassLabel with `names`, in order."""
    features = {LABEL_COLUMN: {"names": list(names), "_type": "ClassLabel"}}
    return {HF_FEATURES_KEY: json.dumps({"info": {"features": features}}).encode()}


def hf_label_names(schema: pa.Schema) -> list[str] | None:
    """The ClassLabel names `datasets` will give `label` from this schema, or None when it gives a plain int."""
    try:
        features = json.loads((schema.metadata or {})[HF_FEATURES_KEY])["info"]["features"]
        declared = features[LABEL_COLUMN]
    except (KeyError, TypeError, ValueError):
        return None
    if not isinstance(declared, dict) or declared.get("_type") != "ClassLabel":
        return None
    if LABEL_COLUMN not in schema.names or not schema.field(LABEL_COLUMN).equals(LABEL_FIELD):
        return None  # `datasets` keeps a declared feature only on a field of its exact Arrow type
    return list(declared.get("names") or [])


def with_label(table: pa.Table, names: Sequence[str]) -> pa.Table:
    """`table` plus `label`, the index of each row's expression in `names`, declared as a ClassLabel of them."""
    expression = table.column("expression")
    labels = pc.index_in(expression, value_set=pa.array(list(names), pa.string()))
    if labels.null_count:
        bad = sorted(set(pc.filter(expression, pc.is_null(labels)).to_pylist()))
        raise ManifestError(f"expression(s) {bad} are not in the label order {list(names)}")
    out = table.append_column(LABEL_FIELD, labels.cast(pa.int64()))
    return out.replace_schema_metadata({**(table.schema.metadata or {}), **hf_label_metadata(names)})


@dataclass(frozen=True)
class Problem:
    """One broken rule of a dataset: a short code, a message, the file and the sample it concerns."""

    code: str
    message: str
    path: str | None = None
    sample: str | None = None


def make_sample_id(**plan: Any) -> str:
    """Deterministic id of one planned render: sha256 of the canonical JSON of its plan fields (20 hex).

    Only what defines the render goes in (identity, expression, intensity, seeds, ...), so a rerun of
    the same sweep plan produces the same ids and a resume can tell which shards already exist.
    """
    canon = json.dumps(plan, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canon.encode()).hexdigest()[:20]


def dataset_metadata(meta: dict[str, Any], **extra: Any) -> dict[bytes, bytes]:
    """Arrow schema metadata: `meta` plus the schema version, under the one namespaced key."""
    full = {**meta, **extra, "schema_version": MANIFEST_SCHEMA_VERSION, "expressions": list(EXPRESSIONS)}
    return {DATASET_METADATA_KEY: json.dumps(full, sort_keys=True, default=str).encode()}


def parse_dataset_metadata(schema: pa.Schema, source: str) -> dict[str, Any]:
    """The dataset JSON of a schema; raises if it is newer than this code can read."""
    raw = (schema.metadata or {}).get(DATASET_METADATA_KEY)
    if raw is None:
        raise ManifestError(f"{source}: no {DATASET_METADATA_KEY.decode()} metadata: not a fersynth manifest")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{source}: {DATASET_METADATA_KEY.decode()} metadata is not JSON: {exc}") from exc
    check_version(meta.get("schema_version"), source)
    return meta


def check_version(version: Any, source: str) -> None:
    if not isinstance(version, int):
        raise ManifestError(f"{source}: manifest schema_version {version!r} is missing or not an integer")
    if version > MANIFEST_SCHEMA_VERSION:
        raise ManifestError(
            f"{source}: manifest schema version {version} is newer than this fersynth reads "
            f"({MANIFEST_SCHEMA_VERSION}); upgrade fersynth to read it"
        )


def to_table(rows: pd.DataFrame | Sequence[dict[str, Any]], source: str = "rows") -> pa.Table:
    """Convert rows to a table of exactly MANIFEST_SCHEMA, raising ManifestError naming column and value.

    Conversion is per column so an error can say which column failed, then per value to say which
    row: pyarrow's own message for a whole-table cast names neither.
    """
    df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame.from_records(list(rows))
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ManifestError(f"{source}: missing column(s) {missing}")
    unknown = [c for c in df.columns if c not in FIELD_BY_NAME]
    if unknown:
        # Refused rather than dropped: a typo in a column name would otherwise lose data silently.
        raise ManifestError(f"{source}: unknown column(s) {unknown}; add them to manifests.schema.MANIFEST_FIELDS")
    arrays = []
    for field in MANIFEST_FIELDS:
        series = df[field.name].reset_index(drop=True)
        try:
            arr = pa.Array.from_pandas(series, type=field.type)
        except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError, TypeError, OverflowError) as exc:
            row, value = _first_bad_value(series, field.type)
            raise ManifestError(
                f"{source}: column {field.name!r} ({field.type}) row {row}: bad value {value!r} "
                f"({type(value).__name__}): {exc}"
            ) from exc
        if not field.nullable and arr.null_count:
            row = int(series.isna().to_numpy().nonzero()[0][0])
            raise ManifestError(f"{source}: column {field.name!r} row {row}: null value in a non-nullable column")
        arrays.append(arr)
    return pa.Table.from_arrays(arrays, schema=MANIFEST_SCHEMA)


def _first_bad_value(series: pd.Series, type_: pa.DataType) -> tuple[int, Any]:
    for i, v in enumerate(series.tolist()):
        try:
            pa.array([v], type=type_, from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError, TypeError, OverflowError):
            return i, v
    return -1, None  # only a whole-column problem (should not happen); the arrow message says more


def check_file_name(name: Any) -> str | None:
    """Why `name` is not a safe relative posix path inside the dataset root, or None if it is."""
    if not isinstance(name, str) or not name:
        return "empty or not a string"
    if "\\" in name:
        return "contains a backslash (use posix separators)"
    p = PurePosixPath(name)
    if p.is_absolute() or re.match(r"^[A-Za-z]:", name):
        return "is absolute"
    if ".." in p.parts:
        return "contains '..'"
    if (
        not p.parts
        or p.parts[0] in (MANIFEST_DIR, "metadata.parquet")
        or any(part.startswith((".", "_")) for part in p.parts)
    ):
        # manifest/ holds the shards (pyarrow would try to read images there as Parquet); hidden and
        # underscore names are skipped by HF and pyarrow discovery, so the image would vanish.
        return f"collides with the manifest layout ({MANIFEST_DIR}/, metadata.parquet) or is a hidden name"
    words = HF_SPLIT_WORDS.intersection(re.split(r"[-._ 0-9/]+", name.lower()))
    if words:
        return f"contains {sorted(words)}, which Hugging Face datasets would read as a split name"
    return None


def row_issues(df: pd.DataFrame, shard_index: int | None = None) -> list[Problem]:
    """Value-level rules over typed manifest rows (types are `to_table`'s job). Empty list = valid."""
    issues: list[Problem] = []
    if df.empty:
        return issues

    def add(code: str, mask: pd.Series, text: str) -> None:
        for _, r in df.loc[mask].iterrows():
            issues.append(Problem(code, text.format(**r.to_dict()), r.get("file_name"), r.get("sample_id")))

    for col in ("sample_id", "file_name"):
        dup = df[col].duplicated(keep="first")
        add(f"duplicate_{col}", dup, f"duplicate {col} {{{col}!r}}")
    for name in df["file_name"]:
        why = check_file_name(name)
        if why:
            sample = df.loc[df["file_name"] == name, "sample_id"].iloc[0]
            issues.append(Problem("path_escape", f"file_name {name!r} {why}", name, sample))
    add(
        "invalid_value",
        ~df["sha256"].astype(str).str.fullmatch(_HEX64.pattern),
        "sha256 {sha256!r} is not 64 lowercase hex",
    )
    add(
        "invalid_value",
        ~df["checkpoint_sha256"].astype(str).str.fullmatch(_HEX64.pattern),
        "checkpoint_sha256 {checkpoint_sha256!r} is not 64 lowercase hex",
    )
    add("invalid_value", (df["width"] <= 0) | (df["height"] <= 0), "size {width}x{height} is not positive")
    add("invalid_value", ~df["expression"].isin(EXPRESSIONS), "expression {expression!r} is not one of the 7")
    pred = df["expression_pred"]
    add("invalid_value", ~pred.isin(EXPRESSIONS), "expression_pred {expression_pred!r} is not one of the 7")
    known = df["expression"].isin(EXPRESSIONS)
    idx = df["expression"].map(lambda e: EXPRESSIONS.index(e) if e in EXPRESSIONS else -1)
    add(
        "invalid_value",
        known & (idx != df["expression_index"]),
        "expression_index {expression_index} != {expression!r}",
    )
    add(
        "invalid_value",
        ~df["identity_source"].astype(str).str.fullmatch(_SOURCE.pattern),
        "identity_source {identity_source!r}",
    )
    for col in _UNIT_INTERVAL:
        v = df[col].astype(float)
        add("invalid_value", ~v.between(0.0, 1.0), f"{col} {{{col}}} is outside 0..1")
    if shard_index is not None:
        add("invalid_value", df["shard"] != shard_index, f"shard {{shard}} != this shard's index {shard_index}")
    # all_pass=True must not hide a failed recorded check (an auditor should not have to trust it);
    # all_pass=False with every flag True is allowed: a check without its own column may have failed.
    # `.eq(False)` is False for nulls, so only a recorded failure counts.
    failed = pd.concat([df[c].eq(False) for c in ("expression_pass", "identity_pass", "face_found")], axis=1).any(
        axis=1
    )
    add("invalid_value", df["all_pass"].eq(True) & failed, "all_pass is true but a recorded check failed")
    return issues

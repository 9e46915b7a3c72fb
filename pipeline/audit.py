"""Audit a generated dataset from its files alone: schema, files and hashes, paths, card, status, lineage.

Every file a reader or tool uses is checked: the shards and images (hashes in the manifest and _SUCCESS),
metadata.parquet column by column against the shards (and its `label`, the class Hugging Face ImageFolder
reads, against each row's expression in the label order), the card against the rows, its label order and
the dataset JSON finalize stored in manifest/_common_metadata, every other dataset file by the sha256
`finalize` recorded in _SUCCESS, the status files against the card's status, and stray files or folders.
Not covered: _SUCCESS itself (the record everything else is checked against) and the REJECTED file's
text (only its presence is checked against the card); `AuditResult.stats["not_covered"]` names them.

Every finding is a `Problem` with a stable `code` so tools can act on it; the audit never stops at the
first one (an auditor wants the full list), except for a folder that is not a dataset at all.

It lives above `manifests/` (the data contract, which imports nothing of the pipeline) because it
re-runs the quality gates (pipeline.quality.gates) on the manifest's rows and the card's thresholds.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from manifests.card import CARD_JSON, CARD_MD, compute_stats
from manifests.layout import (
    COMMON_METADATA,
    HASHED_FILES,
    REJECTED_MARKER,
    REPORT_DIR,
    SHARD_RE,
)
from manifests.schema import (
    COLUMNS,
    FIELD_BY_NAME,
    LABEL_COLUMN,
    MANIFEST_SCHEMA,
    ManifestError,
    Problem,
    check_file_name,
    columns_of_version,
    hf_label_names,
    label_order,
    parse_dataset_metadata,
    row_issues,
)
from manifests.status import REJECTED, card_status, read_status
from manifests.writer import IMAGEFOLDER_METADATA, MANIFEST_DIR, SUCCESS_MARKER, list_shards
from pipeline.config import QualityConfig
from pipeline.io_utils import inside_root, sha256_file
from pipeline.quality.gates import evaluate_gates, gate_inputs_from_manifest

# Float statistics in the card are rounded; anything beyond this is a real disagreement.
TOLERANCE = 1e-5
# What no recorded hash covers, named in every result so nobody assumes otherwise.
NOT_COVERED = (SUCCESS_MARKER, f"the text of {REJECTED_MARKER} (its presence is checked)")
# Card fields that finalize also stores in manifest/_common_metadata (the two must agree), and what the
# card writes for each when the dataset JSON has none.
VERDICT_FIELDS: dict[str, Any] = {"status": None, "gates": [], "metrics": {}, "thresholds": {}}


@dataclass
class AuditResult:
    root: str
    problems: list[Problem] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    lineage: dict[str, Any] = field(default_factory=dict)
    status: str | None = None  # published | rejected | unfinished (manifests.status)
    status_reason: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "ok": self.ok,
            "problems": [asdict(p) for p in self.problems],
            "stats": self.stats,
            "lineage": self.lineage,
            "status": self.status,
            "status_reason": self.status_reason,
        }


def audit_dataset(root: Path, check_hashes: bool = True) -> AuditResult:
    """Check the dataset at `root`; `check_hashes=False` skips reading every image (existence still checked)."""
    root = Path(root)
    result = AuditResult(root=str(root))
    add = result.problems.append
    if not root.exists():
        add(Problem("not_found", f"{root} does not exist", str(root)))
        return result
    shards = list_shards(root)
    card_path = root / CARD_JSON
    if not root.is_dir() or (not shards and not card_path.is_file()):
        add(Problem("not_a_dataset", f"not a fersynth dataset: no {MANIFEST_DIR}/*.parquet or card", str(root)))
        return result

    df = _check_shards(root, shards, add)
    result.stats = {"n_shards": len(shards), "n_rows": len(df), "hashes_checked": check_hashes}
    if not df.empty:
        for issue in row_issues(df):
            add(issue)
        _check_files(root, df, check_hashes, add)
    for rel in unaccounted_files(root, df["file_name"]):
        add(Problem("stray_file", f"{rel!r} is neither in the manifest nor a dataset file", rel))
    for rel in unaccounted_folders(root, df["file_name"]):
        add(Problem("stray_folder", f"folder {rel!r} holds no file of the dataset (empty or unknown)", rel))
    success = _check_success(root, shards, len(df), add)
    _check_recorded_files(root, success, add)
    _check_imagefolder_copy(root, df, add)
    card = _check_card(root, df, add)
    _check_card_against_common_metadata(root, card, add)
    _check_status_files(root, card, add)
    status = read_status(root)
    result.status, result.status_reason = status.state, status.reason
    result.stats.update(compute_stats(df) if not df.empty else {})
    result.stats["not_covered"] = list(NOT_COVERED)
    result.lineage = card.get("lineage", {}) if card else {}
    return result


def _check_shards(root: Path, shards: list[tuple[int, int, Path]], add: Any) -> pd.DataFrame:
    frames = []
    counts = sorted({n for _, n, _ in shards})
    if len(counts) > 1:
        add(Problem("shard_set", f"shard files disagree on the shard count: {counts}", str(root / MANIFEST_DIR)))
    elif counts:
        missing = sorted(set(range(counts[0])) - {i for i, _, _ in shards})
        if missing:
            add(Problem("shard_set", f"missing shard(s) {missing} of {counts[0]}", str(root / MANIFEST_DIR)))
    if not shards:
        add(Problem("no_manifest", f"no {MANIFEST_DIR}/part-*.parquet beside the card", str(root)))
    for index, _, path in shards:
        read = _read_with_meta(path, add, "unreadable_shard", "schema_version")
        if read is None:
            continue
        table, meta = read
        if not _schema_ok(table.schema, path, add, columns_of_version(meta["schema_version"])):
            continue
        frame = _as_current_schema(table).to_pandas()
        wrong = frame["shard"] != index
        if wrong.any():
            add(Problem("shard_mismatch", f"{int(wrong.sum())} row(s) name another shard than {index}", str(path)))
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)


def _read_with_meta(path: Path, add: Any, unreadable: str, bad_meta: str) -> tuple[pa.Table, dict[str, Any]] | None:
    """The Parquet table at `path` and its fersynth metadata, or None once the reason is reported."""
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for damaged files
        add(Problem(unreadable, f"cannot read: {exc}", str(path)))
        return None
    try:
        return table, parse_dataset_metadata(table.schema, str(path))
    except ManifestError as exc:
        add(Problem(bad_meta, str(exc), str(path)))
        return None


def _as_current_schema(table: pa.Table) -> pa.Table:
    """`table` in today's column order and types; columns added by a later schema version are null."""
    for name in (c for c in COLUMNS if c not in table.schema.names):
        table = table.append_column(FIELD_BY_NAME[name], pa.nulls(len(table), FIELD_BY_NAME[name].type))
    return table.select(COLUMNS).cast(MANIFEST_SCHEMA)


def _schema_ok(schema: pa.Schema, path: Path, add: Any, required: list[str]) -> bool:
    ok = True
    for name in required:
        if name not in schema.names:
            add(Problem("schema_mismatch", f"missing column {name!r}", str(path)))
            ok = False
        elif schema.field(name).type != FIELD_BY_NAME[name].type:
            want, got = FIELD_BY_NAME[name].type, schema.field(name).type
            add(Problem("schema_mismatch", f"column {name!r} is {got}, expected {want}", str(path)))
            ok = False
    extra = [n for n in schema.names if n not in FIELD_BY_NAME]
    if extra:
        add(Problem("schema_mismatch", f"unknown column(s) {extra} for this schema version", str(path)))
    return ok


def _check_files(root: Path, df: pd.DataFrame, check_hashes: bool, add: Any) -> None:
    for name, sha, sample in zip(df["file_name"], df["sha256"], df["sample_id"], strict=True):
        if check_file_name(name):
            continue  # already reported by row_issues; never open a path outside the root
        try:
            path = inside_root(root, name)
        except ValueError:  # e.g. a symlink that resolves outside the root
            add(Problem("path_escape", f"file_name {name!r} resolves outside the dataset root", name, sample))
            continue
        if not path.is_file():
            add(Problem("missing_file", f"image {name!r} does not exist", name, sample))
        elif check_hashes and sha256_file(path) != sha:
            add(Problem("hash_mismatch", f"image {name!r} does not match its sha256", name, sample))


def dataset_files() -> frozenset[str]:
    """Every file (relative to the root) a dataset holds besides its images and manifest parts."""
    return frozenset({SUCCESS_MARKER, REJECTED_MARKER, *HASHED_FILES})


def unaccounted_files(root: Path, file_names: Iterable[str]) -> list[str]:
    """Files under `root` (relative, '/'-separated) that no manifest row and no dataset file accounts for."""
    root = Path(root)
    known = {PurePosixPath(n).as_posix() for n in file_names} | dataset_files()
    found = []
    for folder, subfolders, files in os.walk(root):
        here = Path(folder).relative_to(root)
        # A link to a folder is not walked into (it may lead anywhere), so it is reported as an entry.
        links = [d for d in subfolders if (Path(folder) / d).is_symlink()]
        for name in [*files, *links]:
            rel = (here / name).as_posix()
            if rel not in known and not _is_manifest_part(rel):
                found.append(rel)
    return sorted(found)


def unaccounted_folders(root: Path, file_names: Iterable[str]) -> list[str]:
    """Top-most folders under `root` that hold no image of the manifest and no dataset file (empty or unknown)."""
    root = Path(root)
    needed = {MANIFEST_DIR, REPORT_DIR}
    for rel in [*file_names, *dataset_files()]:
        needed.update(p.as_posix() for p in PurePosixPath(rel).parents if p.as_posix() != ".")
    found = []
    for folder, subfolders, _ in os.walk(root):
        here = Path(folder).relative_to(root)
        for name in list(subfolders):
            rel = (here / name).as_posix()
            if rel not in needed and not (Path(folder) / name).is_symlink():  # a link is already a stray_file
                found.append(rel)
                subfolders.remove(name)  # its contents are reported as stray files; name the folder once
    return sorted(found)


def _is_manifest_part(rel: str) -> bool:
    folder, _, name = rel.rpartition("/")
    return folder == MANIFEST_DIR and SHARD_RE.match(name) is not None


def _check_success(root: Path, shards: list[tuple[int, int, Path]], n_rows: int, add: Any) -> dict[str, Any]:
    """Check the shards against _SUCCESS; returns what _SUCCESS records ({} when it is missing or unreadable)."""
    marker = root / SUCCESS_MARKER
    if not marker.is_file():
        add(Problem("not_finalized", f"no {SUCCESS_MARKER}: the run did not finish (or a shard was rewritten)"))
        return {}
    try:
        info = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        add(Problem("not_finalized", f"{SUCCESS_MARKER} is unreadable: {exc}", str(marker)))
        return {}
    if not isinstance(info, dict):
        add(Problem("not_finalized", f"{SUCCESS_MARKER} is not a JSON object", str(marker)))
        return {}
    recorded = info.get("shards", {})
    present = {p.name: p for _, _, p in shards}
    for name in sorted(set(recorded) | set(present)):
        if name not in present:
            add(Problem("shard_set", f"shard {name} listed in {SUCCESS_MARKER} is missing", name))
        elif name not in recorded:
            add(Problem("shard_set", f"shard {name} is not listed in {SUCCESS_MARKER}", name))
        elif sha256_file(present[name]) != recorded[name]:
            add(Problem("shard_modified", f"shard {name} changed after the dataset was finalized", name))
    if info.get("n_rows") != n_rows:
        add(Problem("shard_modified", f"{SUCCESS_MARKER} records {info.get('n_rows')} rows, shards hold {n_rows}"))
    return info


def _check_recorded_files(root: Path, success: dict[str, Any], add: Any) -> None:
    """Every dataset file against the sha256 finalize recorded; one present but unrecorded was added later."""
    recorded = success.get("files")
    if not isinstance(recorded, dict):
        if success:  # written before finalize recorded file hashes: say so rather than pass silently
            add(Problem("files_unrecorded", f"{SUCCESS_MARKER} records no file hashes (finalized by an older "
                        "fersynth): dataset files cannot be checked; rerun the generate command to re-finalize"))  # fmt: skip
        return
    for rel in sorted(set(recorded) | {r for r in HASHED_FILES if (root / r).is_file()}):
        path = root / rel
        if rel not in recorded:
            add(Problem("file_unrecorded", f"{rel} was added after the dataset was finalized", rel))
        elif not path.is_file():
            add(Problem("file_missing", f"{rel} (recorded in {SUCCESS_MARKER}) is missing", rel))
        elif sha256_file(path) != recorded[rel]:
            add(Problem("file_modified", f"{rel} changed after the dataset was finalized", rel))


def _check_imagefolder_copy(root: Path, df: pd.DataFrame, add: Any) -> None:
    path = root / IMAGEFOLDER_METADATA
    if not path.is_file():
        add(Problem("metadata_mismatch", f"no {IMAGEFOLDER_METADATA} (the Hugging Face ImageFolder view)", str(path)))
        return
    read = _read_with_meta(path, add, "metadata_mismatch", "metadata_mismatch")
    if read is None:
        return
    table, meta = read
    expected = [*columns_of_version(meta["schema_version"]), LABEL_COLUMN]
    if table.schema.names == expected[:-1]:
        add(Problem("metadata_mismatch", f"{IMAGEFOLDER_METADATA} has no {LABEL_COLUMN!r} column (finalized by an "
                    "older fersynth), so load_dataset('imagefolder') gives no class; `fersynth export-dataset "
                    "--format hf` writes a copy that has it", str(path)))  # fmt: skip
        return
    if table.schema.names != expected:  # a reader sees every column of this file: none may differ
        add(Problem("metadata_mismatch", f"{IMAGEFOLDER_METADATA} columns {table.schema.names} are not the "
                    f"manifest's and {LABEL_COLUMN!r}: {expected}", str(path)))  # fmt: skip
        return
    order = label_order(meta)
    declared = hf_label_names(table.schema)
    if declared != order:  # Hugging Face datasets would then number or name the classes otherwise
        said = "no ClassLabel" if declared is None else f"a ClassLabel named {declared}"
        add(Problem("metadata_mismatch", f"{IMAGEFOLDER_METADATA} gives {LABEL_COLUMN!r} {said}, not one named in "
                    f"the label order {order}", str(path)))  # fmt: skip
    try:
        copy = _as_current_schema(table.drop_columns([LABEL_COLUMN])).to_pandas()
    except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError) as exc:
        add(Problem("metadata_mismatch", f"{IMAGEFOLDER_METADATA} columns do not have the manifest's types: {exc}",
                    str(path)))  # fmt: skip
        return
    if sorted(copy["sample_id"]) != sorted(df["sample_id"]):
        add(
            Problem("metadata_mismatch", f"{IMAGEFOLDER_METADATA} does not hold the same rows as the shards", str(path))
        )
        return
    for column, n_rows, sample in differing_columns(copy, df):
        add(Problem("metadata_mismatch", f"{IMAGEFOLDER_METADATA} column {column!r} differs from the manifest in "
                    f"{n_rows} row(s)", str(path), sample))  # fmt: skip
    n_rows, sample = _wrong_labels(table.column(LABEL_COLUMN).to_pylist(), copy["sample_id"], df, order)
    if n_rows:
        add(Problem("metadata_mismatch", f"{IMAGEFOLDER_METADATA} column {LABEL_COLUMN!r} is not the index of the "
                    f"row's expression in the label order {order} in {n_rows} row(s)", str(path), sample))  # fmt: skip


def _wrong_labels(labels: list[Any], sample_ids: pd.Series, df: pd.DataFrame, order: list[str]) -> tuple[int, str]:
    """(rows whose label is not their manifest expression's index in `order`, first such sample_id)."""
    index = {e: i for i, e in enumerate(order)}
    want = sample_ids.map(dict(zip(df["sample_id"], df["expression"], strict=True))).map(index)
    got = pd.Series(labels, index=sample_ids.index, dtype="object")
    wrong = ~(want.notna() & got.notna() & (want == got))
    return int(wrong.sum()), str(sample_ids[wrong].iloc[0]) if wrong.any() else ""


def differing_columns(copy: pd.DataFrame, df: pd.DataFrame) -> list[tuple[str, int, str]]:
    """(column, rows that differ, first such sample_id) of two frames holding the same sample ids."""
    a = copy.sort_values("sample_id").reset_index(drop=True)
    b = df.sort_values("sample_id").reset_index(drop=True)
    out = []
    for column in COLUMNS:
        both_null = a[column].isna() & b[column].isna()
        differ = ~(both_null | (a[column] == b[column]).fillna(False).astype(bool))
        if differ.any():
            out.append((column, int(differ.sum()), str(a.loc[differ, "sample_id"].iloc[0])))
    return out


def _check_card_against_common_metadata(root: Path, card: dict[str, Any], add: Any) -> None:
    """The card's verdict (status, gates, metrics, thresholds) is also in _common_metadata: they must agree."""
    path = root / MANIFEST_DIR / COMMON_METADATA
    if not path.is_file():
        if (root / SUCCESS_MARKER).is_file():
            add(Problem("metadata_mismatch", f"no {MANIFEST_DIR}/{COMMON_METADATA} in a finalized dataset", str(path)))
        return
    try:
        stored = parse_dataset_metadata(pq.read_schema(path), str(path))
    except ManifestError as exc:
        add(Problem("metadata_mismatch", str(exc), str(path)))
        return
    except Exception as exc:  # pyarrow raises several types for damaged files
        add(Problem("metadata_mismatch", f"cannot read: {exc}", str(path)))
        return
    if not card:
        return
    for name, empty in VERDICT_FIELDS.items():
        # Through JSON as the card was, so that only a real difference (not a tuple or NaN) counts.
        ours = json.loads(json.dumps(_or_empty(stored.get(name), empty), default=str))
        for key, stated, recorded in _diff(_or_empty(card.get(name), empty), ours, f"{name}."):
            add(Problem("card_mismatch", f"card {key} = {stated!r} but {MANIFEST_DIR}/{COMMON_METADATA} records "
                        f"{recorded!r}", str(root / CARD_JSON)))  # fmt: skip
    labels = card.get("labels")  # absent from cards older than the label table
    if isinstance(labels, dict) and labels.get("names") != label_order(stored):
        add(Problem("card_mismatch", f"card labels.names = {labels.get('names')!r} but the dataset's label order is "
                    f"{label_order(stored)!r}", str(root / CARD_JSON)))  # fmt: skip


def _or_empty(value: Any, empty: Any) -> Any:
    return empty if value is None else value


def _check_status_files(root: Path, card: dict[str, Any], add: Any) -> None:
    """REJECTED must be there exactly when the card's status says rejected (a kill between them, or an edit)."""
    rejected_file = (root / REJECTED_MARKER).exists()
    status = card.get("status") if card else card_status(root)
    if rejected_file and status != REJECTED:
        add(Problem("status_mismatch", f"{REJECTED_MARKER} is present but the card's status is {status!r}",
                    str(root / REJECTED_MARKER)))  # fmt: skip
    elif status == REJECTED and not rejected_file:
        add(Problem("status_mismatch", f"the card's status is 'rejected' but there is no {REJECTED_MARKER} file",
                    str(root / CARD_JSON)))  # fmt: skip


def _check_card(root: Path, df: pd.DataFrame, add: Any) -> dict[str, Any]:
    path = root / CARD_JSON
    if not (root / CARD_MD).is_file():
        add(Problem("card_missing", f"no {CARD_MD} dataset card", str(root / CARD_MD)))
    if not path.is_file():
        add(Problem("card_missing", f"no {CARD_JSON}", str(path)))
        return {}
    try:
        card = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        add(Problem("card_mismatch", f"{CARD_JSON} is unreadable: {exc}", str(path)))
        return {}
    if df.empty:
        return card
    for key, stated, actual in _diff(card.get("stats", {}), compute_stats(df)):
        add(Problem("card_mismatch", f"card stats.{key} = {stated!r} but the rows give {actual!r}", str(path)))
    _recheck_gates(card, df, str(path), add)
    for gate in card.get("gates", []):
        verdict = _gate_verdict(gate)
        if verdict is not None and verdict != bool(gate.get("passed")):
            add(Problem("gate_inconsistent", f"gate {gate.get('name')!r}: passed={gate.get('passed')} "
                        f"but {gate.get('value')} {gate.get('op')} {gate.get('threshold')} is {verdict}", str(path)))  # fmt: skip
    return card


def _recheck_gates(card: dict[str, Any], df: pd.DataFrame, path: str, add: Any) -> None:
    """Re-run the gates on the manifest's per-image scores, the card's metrics and its thresholds:
    a card whose gate values or verdicts the rows do not give is flagged (and a publish despite a failure)."""
    stated = {g.get("name"): g for g in card.get("gates", [])}
    if not stated:
        return
    try:
        # A card older than the usefulness gate has no such threshold: its gate did not exist then. Its
        # calibration record says how thresholds were found, not what they are.
        thresholds = {k: v for k, v in card.get("thresholds", {}).items() if k != "calibration"}
        cfg = QualityConfig(**{"usefulness": False, **thresholds})
    except ValueError as exc:
        add(Problem("card_mismatch", f"card thresholds cannot be read back: {exc}".splitlines()[0], path))
        return
    metrics = {k: (math.nan if v is None else v) for k, v in card.get("metrics", {}).items()}
    report = evaluate_gates(gate_inputs_from_manifest(df), metrics, cfg)
    for gate in report.gates:
        was = stated.get(gate.name)
        if was is None:
            add(Problem("gate_missing", f"the card has no {gate.name!r} gate, which these thresholds require", path))
            continue
        value = gate.value if math.isfinite(gate.value) else None  # the card stores NaN and inf as null
        same_value = (value is None) == (was.get("value") is None) and (
            value is None or math.isclose(float(was["value"]), value, rel_tol=1e-6, abs_tol=TOLERANCE)
        )
        if not same_value or bool(was.get("passed")) != gate.passed:
            add(Problem("gate_mismatch", f"card gate {gate.name!r}: value {was.get('value')!r} passed "
                        f"{was.get('passed')} but the manifest gives {value!r} passed {gate.passed}", path))  # fmt: skip
    if card.get("status") == "published" and not report.passed:
        add(Problem("gate_mismatch", f"published although the manifest fails: {report.failed_message()}", path))


_OPS = {
    "<": lambda v, t: v < t,
    "<=": lambda v, t: v <= t,
    ">": lambda v, t: v > t,
    ">=": lambda v, t: v >= t,
    "==": lambda v, t: v == t,
}


def _gate_verdict(gate: dict[str, Any]) -> bool | None:
    """What the gate's own value/op/threshold say; None when they cannot be evaluated."""
    op, v, t = gate.get("op"), gate.get("value"), gate.get("threshold")
    if op not in _OPS or not isinstance(v, int | float) or not isinstance(t, int | float):
        return None
    return bool(_OPS[op](v, t))


def _diff(stated: Any, actual: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, stated, actual) wherever the card and the recomputed statistics differ."""
    if isinstance(actual, dict):
        if not isinstance(stated, dict):
            return [(prefix.rstrip("."), stated, actual)]
        out = []
        for k in sorted(set(stated) | set(actual)):
            out += _diff(stated.get(k), actual.get(k), f"{prefix}{k}.")
        return out
    key = prefix.rstrip(".")
    if isinstance(actual, float) and isinstance(stated, int | float) and not isinstance(stated, bool):
        return [] if math.isclose(stated, actual, abs_tol=TOLERANCE) else [(key, stated, actual)]
    return [] if stated == actual else [(key, stated, actual)]

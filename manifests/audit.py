"""Audit a generated dataset from its files alone: schema, files and hashes, paths, card, lineage.

Every finding is a `Problem` with a stable `code` so tools can act on it; the audit never stops at the
first one (an auditor wants the full list), except for a folder that is not a dataset at all.
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

from manifests.card import CARD_JSON, CARD_MD, CROISSANT, compute_stats
from manifests.layout import (
    CODES_FILE,
    COMMON_METADATA,
    PLAN_FILE,
    REJECTED_MARKER,
    REPORT_DIR,
    REPORT_FILES,
    SHARD_RE,
    USEFULNESS_FILE,
)
from manifests.schema import (
    COLUMNS,
    FIELD_BY_NAME,
    MANIFEST_SCHEMA,
    ManifestError,
    check_file_name,
    columns_of_version,
    parse_dataset_metadata,
    row_issues,
)
from manifests.writer import IMAGEFOLDER_METADATA, MANIFEST_DIR, SUCCESS_MARKER, list_shards
from pipeline.io_utils import inside_root, sha256_file

# Float statistics in the card are rounded; anything beyond this is a real disagreement.
TOLERANCE = 1e-5


@dataclass(frozen=True)
class Problem:
    code: str
    message: str
    path: str | None = None
    sample: str | None = None


@dataclass
class AuditResult:
    root: str
    problems: list[Problem] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    lineage: dict[str, Any] = field(default_factory=dict)

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
        }


def audit_dataset(root: Path, check_hashes: bool = True) -> AuditResult:
    """Check the dataset at `root`; `check_hashes=False` skips reading every image (existence still checked)."""
    root = Path(root)
    result = AuditResult(root=str(root))
    add = result.problems.append
    shards = list_shards(root)
    card_path = root / CARD_JSON
    if not root.is_dir() or (not shards and not card_path.is_file()):
        add(Problem("not_a_dataset", f"not a fersynth dataset: no {MANIFEST_DIR}/*.parquet or card", str(root)))
        return result

    df = _check_shards(root, shards, add)
    result.stats = {"n_shards": len(shards), "n_rows": len(df), "hashes_checked": check_hashes}
    if not df.empty:
        for issue in row_issues(df):
            add(Problem(issue.code, issue.message, issue.file_name, issue.sample_id))
        _check_files(root, df, check_hashes, add)
        for rel in unaccounted_files(root, df["file_name"]):
            add(Problem("stray_file", f"{rel!r} is neither in the manifest nor a dataset file", rel))
    _check_success(root, shards, len(df), add)
    _check_imagefolder_copy(root, df, add)
    card = _check_card(root, df, add)
    result.stats.update(compute_stats(df) if not df.empty else {})
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
        try:
            table = pq.read_table(path)
        except Exception as exc:  # pyarrow raises several types for damaged files
            add(Problem("unreadable_shard", f"cannot read: {exc}", str(path)))
            continue
        try:
            version = parse_dataset_metadata(table.schema, str(path))["schema_version"]
        except ManifestError as exc:
            add(Problem("schema_version", str(exc), str(path)))
            continue
        if not _schema_ok(table.schema, path, add, columns_of_version(version)):
            continue
        for name in (c for c in COLUMNS if c not in table.schema.names):  # added by a later version
            table = table.append_column(FIELD_BY_NAME[name], pa.nulls(len(table), FIELD_BY_NAME[name].type))
        frame = table.select(COLUMNS).cast(MANIFEST_SCHEMA).to_pandas()
        wrong = frame["shard"] != index
        if wrong.any():
            add(Problem("shard_mismatch", f"{int(wrong.sum())} row(s) name another shard than {index}", str(path)))
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)


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
    return frozenset(
        {
            SUCCESS_MARKER,
            IMAGEFOLDER_METADATA,
            f"{MANIFEST_DIR}/{COMMON_METADATA}",
            CARD_JSON,
            CARD_MD,
            CROISSANT,
            PLAN_FILE,
            CODES_FILE,
            REJECTED_MARKER,
            USEFULNESS_FILE,
            *(f"{REPORT_DIR}/{name}" for name in REPORT_FILES),
        }
    )


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


def _is_manifest_part(rel: str) -> bool:
    folder, _, name = rel.rpartition("/")
    return folder == MANIFEST_DIR and SHARD_RE.match(name) is not None


def _check_success(root: Path, shards: list[tuple[int, int, Path]], n_rows: int, add: Any) -> None:
    marker = root / SUCCESS_MARKER
    if not marker.is_file():
        add(Problem("not_finalized", f"no {SUCCESS_MARKER}: the run did not finish (or a shard was rewritten)"))
        return
    try:
        info = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        add(Problem("not_finalized", f"{SUCCESS_MARKER} is unreadable: {exc}", str(marker)))
        return
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


def _check_imagefolder_copy(root: Path, df: pd.DataFrame, add: Any) -> None:
    path = root / IMAGEFOLDER_METADATA
    if not path.is_file():
        add(Problem("metadata_mismatch", f"no {IMAGEFOLDER_METADATA} (the Hugging Face ImageFolder view)", str(path)))
        return
    try:
        copy = pq.read_table(path, columns=["sample_id", "file_name", "sha256"]).to_pandas()
    except Exception as exc:  # pyarrow raises several types for damaged files
        add(Problem("metadata_mismatch", f"cannot read: {exc}", str(path)))
        return
    key = ["sample_id", "file_name", "sha256"]
    a = copy[key].sort_values(key).reset_index(drop=True)
    b = df[key].sort_values(key).reset_index(drop=True) if not df.empty else pd.DataFrame(columns=key)
    if not a.equals(b):
        add(
            Problem("metadata_mismatch", f"{IMAGEFOLDER_METADATA} does not hold the same rows as the shards", str(path))
        )


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
    from pipeline.config import QualityConfig
    from pipeline.quality.gates import evaluate_gates, gate_inputs_from_manifest

    stated = {g.get("name"): g for g in card.get("gates", [])}
    if not stated:
        return
    try:
        # A card older than the usefulness gate has no such threshold: its gate did not exist then.
        cfg = QualityConfig(**{"usefulness": False, **card.get("thresholds", {})})
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

"""Write the generated-dataset manifest shard by shard, then finalize it.

Layout of a generated dataset (DIR):

    DIR/
      images/<expression>/<sample_id>.png       the renders (any layout works: `file_name` names them)
      manifest/part-00000-of-00012.parquet      the manifest, one shard per render task (canonical copy)
      manifest/_common_metadata                 schema + final dataset JSON, no rows (Spark/Dask convention)
      metadata.parquet                          all shards concatenated plus `label`: the HF ImageFolder view
      dataset_card.json, README.md, croissant.json   the dataset card (manifests.card)
      _SUCCESS                                  written last by `finalize`: shard hashes, row count and the
                                                sha256 of every other dataset file (layout.HASHED_FILES)

Why this layout, reader by reader:
- pandas `pd.read_parquet(DIR/"manifest")` and `pyarrow.dataset.dataset(DIR/"manifest")` read the
  shards; discovery skips `_common_metadata` and the `.tmp-*` files of unfinished writes (names
  starting with '.' or '_' are ignored), so a crashed run never shows half a shard.
- DuckDB: `read_parquet('DIR/manifest/*.parquet')`; the glob matches only finished shards too.
- Hugging Face `datasets`: `load_dataset("imagefolder", data_dir=DIR)` (or `load_dataset(DIR)`,
  which infers imagefolder from the PNGs) pairs every image with its row of `metadata.parquet`
  through `file_name`, which ImageFolder resolves relative to the metadata file, hence relative to
  DIR. ImageFolder only takes a metadata file named exactly `metadata.parquet` and ignores other
  Parquet files. Beside a metadata file it infers no label from folders, so metadata.parquet adds
  `label` (= expression_index) to the manifest's columns, declared under its b"huggingface" schema key
  as a ClassLabel named in the dataset's label order (manifests.schema.with_label).
  `load_dataset("parquet", data_files="DIR/manifest/*.parquet")` gives the manifest without decoding
  images.
- The shards are NOT under `data/`: `datasets` first tries the pattern
  `data/{split}-NNNNN-of-NNNNN*.*`, so `data/part-00000-of-00002.parquet` turns into a split named
  "part" holding no images, and ImageFolder then finds nothing (tested with datasets 5.2). For the
  same reason image paths must not contain split words (train, test, val, ...) as path tokens;
  `manifests.schema.check_file_name` refuses them.
- `file_name` is relative to DIR (not to manifest/) in every copy, so all readers agree on one path.
The price is a second copy of the rows in `metadata.parquet` (a few hundred bytes per image, small
next to the images); it is derived from the shards at finalize time and the audit checks it agrees.

Each shard carries the dataset JSON known at render time; the final one (gates, FID/KID) is only known
after all shards exist, so it goes into `_common_metadata`, `metadata.parquet` and the card rather
than rewriting every shard.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from manifests.card import write_card
from manifests.layout import (
    COMMON_METADATA,
    HASHED_FILES,
    IMAGEFOLDER_METADATA,
    SUCCESS_MARKER,
    list_shards,
    shard_path,
)
from manifests.schema import (
    MANIFEST_DIR,
    MANIFEST_SCHEMA,
    ManifestError,
    dataset_metadata,
    label_order,
    parse_dataset_metadata,
    row_issues,
    to_table,
    with_label,
)
from pipeline.io_utils import atomic_path, atomic_write_json, inside_root, sha256_file

# Rows per Parquet row group: small enough for readers to skip, large enough to compress well.
ROW_GROUP_SIZE = 64 * 1024


def write_shard(
    root: Path,
    shard_index: int,
    n_shards: int,
    rows: pd.DataFrame | Sequence[dict[str, Any]],
    dataset_meta: dict[str, Any],
) -> Path:
    """Validate `rows` and write them as shard `shard_index` of `n_shards`, atomically.

    `rows` may omit the `shard` column (filled in); if present it must equal `shard_index`.
    Writing a shard removes `_SUCCESS`: the dataset is no longer the one that was finalized.
    """
    if not 0 <= shard_index < n_shards:
        raise ManifestError(f"shard index {shard_index} is outside 0..{n_shards - 1}")
    out = shard_path(root, shard_index, n_shards)
    df = rows.copy() if isinstance(rows, pd.DataFrame) else pd.DataFrame.from_records(list(rows))
    if "shard" not in df.columns:
        df["shard"] = shard_index
    table = to_table(df, source=str(out))
    issues = row_issues(table.to_pandas(), shard_index=shard_index)
    if issues:
        more = f" (and {len(issues) - 1} more)" if len(issues) > 1 else ""
        first = issues[0]
        raise ManifestError(f"{out}: sample {first.sample!r}: {first.message}{more}")
    # Every image must already be on disk: the shard is the commit record for its images.
    for name in table.column("file_name").to_pylist():
        try:
            exists = inside_root(Path(root), name).is_file()
        except ValueError as exc:  # a symlink that leads outside the root
            raise ManifestError(f"{out}: {exc}") from exc
        if not exists:
            raise ManifestError(f"{out}: image {name!r} does not exist under {root}")
    table = table.replace_schema_metadata(
        dataset_metadata(dataset_meta, shard={"index": shard_index, "count": n_shards})
    )
    (Path(root) / SUCCESS_MARKER).unlink(missing_ok=True)
    _write_table(table, out)
    return out


def _write_table(table: pa.Table, out: Path) -> None:
    # ParquetWriter (not pyarrow.dataset.write_dataset) so field-level "doc" metadata is kept.
    with atomic_path(out) as tmp, pq.ParquetWriter(tmp, table.schema, compression="zstd") as writer:
        writer.write_table(table, row_group_size=ROW_GROUP_SIZE)


def shard_is_complete(
    root: Path, shard_index: int, n_shards: int, expected_ids: Iterable[str], *, check_files: bool = True
) -> bool:
    """True if the shard exists, reads back whole, and holds exactly `expected_ids` (order-free).

    A resume calls this per planned shard and re-renders the ones that are False: missing, truncated
    or corrupt, written by a newer schema, for a different plan, or (with `check_files`) whose
    images are gone.
    """
    return shard_problem(root, shard_index, n_shards, expected_ids, check_files=check_files) is None


def shard_problem(
    root: Path, shard_index: int, n_shards: int, expected_ids: Iterable[str], *, check_files: bool = True
) -> str | None:
    """Why the shard is not complete (one line), or None when it is."""
    path = shard_path(root, shard_index, n_shards)
    if not path.is_file():
        return f"{path}: missing"
    try:
        # Reading the columns (not only the footer) catches damaged pages as well as truncation.
        table = pq.read_table(path, columns=["sample_id", "file_name"])
        parse_dataset_metadata(pq.read_schema(path), str(path))
    except ManifestError as exc:
        return str(exc)
    except Exception as exc:  # pyarrow raises several types for damaged files
        return f"{path}: unreadable: {exc}"
    ids = table.column("sample_id").to_pylist()
    if sorted(ids) != sorted(expected_ids):
        return f"{path}: holds {len(ids)} sample ids that differ from the {n_shards}-shard plan"
    if check_files:
        for name in table.column("file_name").to_pylist():
            try:
                if not inside_root(Path(root), name).is_file():
                    return f"{path}: image {name!r} is missing"
            except ValueError as exc:
                return f"{path}: {exc}"
    return None


def read_shards_table(root: Path) -> pa.Table:
    """All finished shards as one table, after checking each shard's schema version."""
    shards = list_shards(root)
    if not shards:
        raise ManifestError(f"{root}: not a fersynth dataset: no {MANIFEST_DIR}/part-*.parquet")
    for _, _, p in shards:
        parse_dataset_metadata(_read_schema(p), str(p))
    dataset = ds.dataset([str(p) for _, _, p in shards], format="parquet", schema=MANIFEST_SCHEMA)
    try:
        return dataset.to_table()
    except Exception as exc:  # pyarrow raises several types for damaged pages; find which file holds them
        for _, _, p in shards:
            _read_table(p)
        raise ManifestError(f"{root}/{MANIFEST_DIR}: cannot read the shards: {exc}") from exc


def _read_schema(path: Path) -> pa.Schema:
    """The shard's schema; a truncated or non-Parquet file is a ManifestError naming it (pyarrow names no file)."""
    try:
        return pq.read_schema(path)
    except Exception as exc:  # pyarrow raises several types for damaged files
        raise ManifestError(f"{path}: cannot read Parquet (truncated or damaged?): {exc}") from exc


def _read_table(path: Path) -> pa.Table:
    try:
        return pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for damaged files
        raise ManifestError(f"{path}: cannot read Parquet (truncated or damaged?): {exc}") from exc


def finalize(root: Path, dataset_meta: dict[str, Any], *, n_shards: int | None = None, card: bool = True) -> Path:
    """Check every shard is there, write the whole-dataset files and then `_SUCCESS`; returns its path.

    Refuses (ManifestError) a set of shards with gaps, mixed counts, or rows duplicated across shards.
    Re-running it is safe: every file is replaced atomically and `_SUCCESS` comes last.
    """
    root = Path(root)
    shards = list_shards(root)
    counts = sorted({n for _, n, _ in shards})
    if not shards:
        raise ManifestError(f"{root}: no shards to finalize under {MANIFEST_DIR}/")
    # The files rewritten below no longer match the old _SUCCESS: a kill from here on leaves an unfinished set.
    (root / SUCCESS_MARKER).unlink(missing_ok=True)
    if len(counts) > 1 or (n_shards is not None and counts != [n_shards]):
        raise ManifestError(f"{root}: shard files disagree on the shard count: {counts} (expected {n_shards})")
    n = counts[0]
    missing = sorted(set(range(n)) - {i for i, _, _ in shards})
    if missing:
        raise ManifestError(f"{root}: cannot finalize: missing shard(s) {missing} of {n}")
    table = read_shards_table(root)
    issues = row_issues(table.to_pandas())
    if issues:
        raise ManifestError(f"{root}: {issues[0].message} (sample {issues[0].sample!r}); {len(issues)} issue(s)")

    final_meta = dataset_metadata(dataset_meta, n_shards=n, n_rows=table.num_rows)
    final = parse_dataset_metadata(pa.schema([], metadata=final_meta), str(root))
    # A crashed writer leaves `.tmp-*` files; harmless to readers, but a finished dataset is tidy.
    for stale in (root / MANIFEST_DIR).glob(".tmp-*"):
        stale.unlink(missing_ok=True)
    with atomic_path(root / MANIFEST_DIR / COMMON_METADATA) as tmp:
        pq.write_metadata(MANIFEST_SCHEMA.with_metadata(final_meta), tmp)
    # The ImageFolder view adds `label`, so `load_dataset("imagefolder")` gives a ClassLabel in the manifest's order.
    _write_table(with_label(table.replace_schema_metadata(final_meta), label_order(final)), root / IMAGEFOLDER_METADATA)
    if card:
        write_card(root, table.to_pandas(), final)
    marker = root / SUCCESS_MARKER
    atomic_write_json(
        marker,
        {
            "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "n_shards": n,
            "n_rows": table.num_rows,
            "shards": {p.name: sha256_file(p) for _, _, p in shards},
            "metadata_parquet_sha256": sha256_file(root / IMAGEFOLDER_METADATA),
            "files": recorded_file_hashes(root),
        },
    )
    return marker


def recorded_file_hashes(root: Path) -> dict[str, str]:
    """sha256 of every dataset file present (layout.HASHED_FILES), for the audit to tell later edits."""
    return {rel: sha256_file(root / rel) for rel in HASHED_FILES if (root / rel).is_file()}

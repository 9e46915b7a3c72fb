"""Read a generated dataset's manifest (see manifests.writer for the layout) and filter it."""

from __future__ import annotations

from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from manifests.layout import COMMON_METADATA, IMAGEFOLDER_METADATA, list_shards
from manifests.schema import MANIFEST_DIR, ManifestError, parse_dataset_metadata
from manifests.writer import read_shards_table


def read_manifest(root: Path, columns: list[str] | None = None) -> pd.DataFrame:
    """All manifest rows of the dataset at `root` (finished shards only), one row per image.

    Raises ManifestError if `root` holds no shards or any shard was written by a newer schema.
    """
    table = read_shards_table(Path(root))
    if columns is not None:
        _check_columns(columns, table.column_names)
        table = table.select(columns)
    return table.to_pandas()


def read_dataset_meta(root: Path) -> dict[str, Any]:
    """The dataset-level JSON: the finalized one if the dataset was finalized, else the first shard's."""
    root = Path(root)
    candidates = [root / MANIFEST_DIR / COMMON_METADATA, root / IMAGEFOLDER_METADATA]
    candidates += [p for _, _, p in list_shards(root)[:1]]
    for path in candidates:
        if path.is_file():
            try:
                schema = pq.read_schema(path)
            except Exception as exc:  # pyarrow raises several types for damaged files
                raise ManifestError(f"{path}: cannot read Parquet schema: {exc}") from exc
            return parse_dataset_metadata(schema, str(path))
    raise ManifestError(f"{root}: not a fersynth dataset: no {MANIFEST_DIR}/part-*.parquet")


Condition = Any | Collection[Any] | Callable[[pd.Series], pd.Series]


def filter_manifest(df: pd.DataFrame, *expressions: str, **conditions: Condition) -> pd.DataFrame:
    """Rows matching every condition.

    `column=value` keeps equal values, `column=[a, b]` (list/tuple/set) keeps any of them, and
    `column=callable` keeps rows where `callable(series)` is True. Each string in `expressions` is a
    pandas query, e.g. ``"intensity > 0.5 and identity_source == 'novel'"``. An unknown column
    raises ManifestError naming it and listing the valid ones.
    """
    _check_columns(conditions, df.columns)
    mask = pd.Series(True, index=df.index)
    for col, cond in conditions.items():
        if callable(cond):
            mask &= cond(df[col]).astype(bool)
        elif isinstance(cond, list | tuple | set | frozenset):
            mask &= df[col].isin(cond)
        elif cond is None:
            mask &= df[col].isna()
        else:
            mask &= df[col] == cond
    out = df[mask]
    for expr in expressions:
        try:
            out = out.query(expr)
        except pd.errors.UndefinedVariableError as exc:
            raise ManifestError(f"filter {expr!r}: {exc}; valid columns: {', '.join(df.columns)}") from exc
        except (SyntaxError, ValueError, TypeError) as exc:
            raise ManifestError(f"filter {expr!r} is not a valid query: {exc}") from exc
    return out


def _check_columns(names: Collection[str], valid: Collection[str]) -> None:
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise ManifestError(f"unknown column(s) {unknown}; valid columns: {', '.join(valid)}")

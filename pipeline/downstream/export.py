"""Export a generated dataset (or a filtered part of it) to layouts other tools read directly.

- `export_imagefolder`: OUT/<expression>/<sample_id>.png, the torchvision ImageFolder / Keras layout.
- `export_hf`: the same folders plus `metadata.parquet` (file_name, label, metadata columns), so
  `datasets.load_dataset("imagefolder", data_dir=OUT)` gives an `image` column, the int `label`
  (index into pipeline.expressions.EXPRESSIONS) and the metadata columns with no further arguments.
  (datasets 5.2 ignores README feature declarations for imagefolder, so `label` stays int64; the
  README shows the one-line cast to a ClassLabel.)

Images are hard-linked when OUT is on the same file system (no extra space, and the bytes, hence
the manifest's sha256, cannot differ), else copied. OUT must be new or empty: an export never
mixes with older files.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from manifests.reader import read_manifest
from manifests.schema import ManifestError
from pipeline.downstream.dataset import Filters, apply_filters
from pipeline.expressions import EXPRESSIONS
from pipeline.io_utils import atomic_write_text, inside_root

# Columns carried into the HF export's metadata (besides file_name and label).
HF_COLUMNS = ("expression", "identity_id", "identity_source", "intensity", "sample_id", "sha256")


def _select(root: Path, filters: Filters, require_pass: bool) -> pd.DataFrame:
    df = read_manifest(root)
    if require_pass:
        df = df[df["all_pass"].eq(True)]
    df = apply_filters(df, filters)
    if df.empty:
        raise ManifestError(f"{root}: no images left to export after filtering")
    return df


def _prepare_out(out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; export into a new folder")
    out.mkdir(parents=True, exist_ok=True)


def _place(src: Path, dst: Path, link: bool) -> str:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if link:
        try:
            os.link(src, dst)
            return "link"
        except OSError:  # another file system, or links not allowed: fall back to a copy
            pass
    shutil.copy2(src, dst)
    return "copy"


def _copy_images(root: Path, df: pd.DataFrame, out: Path, link: bool) -> tuple[list[str], dict[str, int]]:
    names: list[str] = []
    how = {"link": 0, "copy": 0}
    for file_name, expression, sample_id in zip(df["file_name"], df["expression"], df["sample_id"], strict=True):
        src = inside_root(root, file_name)
        if not src.is_file():
            raise ManifestError(f"{root}: image {file_name!r} listed in the manifest is missing")
        # sample_id is unique in a manifest, so the flat per-class name cannot collide.
        rel = f"{expression}/{sample_id}{src.suffix.lower() or '.png'}"
        how[_place(src, out / rel, link)] += 1
        names.append(rel)
    return names, how


def export_imagefolder(
    root: Path | str, out: Path | str, filters: Filters = None, require_pass: bool = True, link: bool = True
) -> dict[str, Any]:
    """Write OUT/<expression>/<sample_id>.png for the selected rows; returns counts."""
    root, out = Path(root), Path(out)
    df = _select(root, filters, require_pass)
    _prepare_out(out)
    _, how = _copy_images(root, df, out, link)
    return {"out": str(out), "images": len(df), "per_class": _counts(df), **how}


def export_hf(
    root: Path | str, out: Path | str, filters: Filters = None, require_pass: bool = True, link: bool = True
) -> dict[str, Any]:
    """An ImageFolder tree plus metadata.parquet and a README with features, loadable by `datasets`."""
    root, out = Path(root), Path(out)
    df = _select(root, filters, require_pass)
    _prepare_out(out)
    names, how = _copy_images(root, df, out, link)
    meta = pd.DataFrame({"file_name": names, "label": df["expression_index"].astype("int64").to_numpy()})
    for col in HF_COLUMNS:
        meta[col] = df[col].to_numpy()
    table = pa.Table.from_pandas(meta, preserve_index=False)
    pq.write_table(table, out / "metadata.parquet")
    atomic_write_text(out / "README.md", _hf_readme(meta, root))
    return {"out": str(out), "images": len(df), "per_class": _counts(df), **how}


def _counts(df: pd.DataFrame) -> dict[str, int]:
    return {e: int(n) for e, n in df["expression"].value_counts().sort_index().items()}


def _hf_readme(meta: pd.DataFrame, root: Path) -> str:
    names = ", ".join(f"{i}={n}" for i, n in enumerate(EXPRESSIONS))
    return (
        f"# {root.name} (fersynth export)\n\n{len(meta)} images, one folder per expression; `metadata.parquet` pairs\n"
        "each `file_name` with its labels.\n\n"
        "```python\nimport datasets\n"
        'ds = datasets.load_dataset("imagefolder", data_dir="<this folder>", split="train")\n'
        f'ds = ds.cast_column("label", datasets.ClassLabel(names={list(EXPRESSIONS)!r}))\n```\n\n'
        f"`label` is the expression index: {names}.\n"
    )

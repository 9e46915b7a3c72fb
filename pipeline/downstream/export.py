"""Export a generated dataset (or a filtered part of it) to layouts other tools read directly.

- `export_imagefolder`: OUT/<label>_<expression>/<sample_id>.png (e.g. `1_happy/`), the torchvision
  ImageFolder / Keras layout. Both number classes by sorted folder name, so the index prefix makes
  their class i the project's label i (pipeline.expressions.EXPRESSIONS) whenever every expression is
  exported; a filtered export keeps the prefix, but those tools then number only the classes present.
- `export_hf`: the same folders plus `metadata.parquet` (file_name, label, metadata columns), so
  `datasets.load_dataset("imagefolder", data_dir=OUT)` gives an `image` column, `label` as a
  ClassLabel in the project's order (all seven names, whatever the filter kept) and the metadata
  columns with no further arguments. (datasets 5.2 ignores README feature declarations for
  imagefolder; metadata.parquet declares `label` under the schema's b"huggingface" key.)

Images are copied, each read once: its sha256 is computed on the way and compared with the manifest's,
so an image changed since it was rendered stops the export, naming the file. `link=True` hard-links
instead (no extra space), but then the exported files ARE the dataset's files: an edit in the export
edits the source dataset (the CLI warns). A rejected or unfinished dataset is refused unless
`allow_rejected`; one whose shards changed after it was finalized is always refused.

The export is built in a hidden `.tmp-` folder beside OUT and renamed to OUT only once complete, so a
failed or interrupted export leaves no half folder. OUT must be new or empty.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from manifests.layout import IMAGEFOLDER_METADATA, SUCCESS_MARKER, TEMP_PREFIX
from manifests.reader import read_manifest
from manifests.schema import LABEL_COLUMN, ManifestError, hf_label_metadata
from manifests.status import changed_shards, require_published
from pipeline.downstream.dataset import Filters, apply_filters
from pipeline.expressions import EXPRESSION_INDEX, EXPRESSIONS
from pipeline.io_utils import atomic_write_text, inside_root, place_file

# Columns carried into the HF export's metadata (besides file_name and label).
HF_COLUMNS = ("expression", "identity_id", "identity_source", "intensity", "sample_id", "sha256")
# Digits of the class-folder prefix: zero-padded so that sorted folder names follow the label order.
_PREFIX_DIGITS = len(str(len(EXPRESSIONS) - 1))


def class_folder(expression: str) -> str:
    """`<label>_<expression>`: the folder name whose sorted position is the expression's label."""
    return f"{EXPRESSION_INDEX[expression]:0{_PREFIX_DIGITS}d}_{expression}"


def _select(root: Path, filters: Filters, require_pass: bool) -> pd.DataFrame:
    df = read_manifest(root)
    if require_pass:
        df = df[df["all_pass"].eq(True)]
    df = apply_filters(df, filters)
    if df.empty:
        raise ManifestError(f"{root}: no images left to export after filtering")
    return df


def check_source(root: Path, allow_rejected: bool) -> None:
    """Refuse a rejected or unfinished dataset (unless allowed) and one whose shards changed after finalize."""
    require_published(root, allow_rejected, "export-dataset")
    changed = changed_shards(root)
    if changed:
        raise ManifestError(
            f"{changed[0]}: changed after the dataset was finalized (sha256 differs from {SUCCESS_MARKER}); "
            f"nothing exported; run `fersynth audit {root}`"
        )


@contextlib.contextmanager
def staged_out(out: Path) -> Iterator[Path]:
    """A hidden folder beside `out` to build the export in, renamed to `out` only when the block succeeds."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} is not empty; export into a new folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    building = out.parent / f"{TEMP_PREFIX}{out.name}.{uuid.uuid4().hex[:8]}"
    building.mkdir()
    try:
        yield building
        if out.exists():
            out.rmdir()  # empty (checked above): a rename replaces no folder on some systems
        os.replace(building, out)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise


def _copy_images(root: Path, df: pd.DataFrame, out: Path, link: bool) -> tuple[list[str], dict[str, int]]:
    names: list[str] = []
    how = {"link": 0, "copy": 0}
    rows = zip(df["file_name"], df["expression"], df["sample_id"], df["sha256"], strict=True)
    for file_name, expression, sample_id, expected_sha in rows:
        src = inside_root(root, file_name)
        if not src.is_file():
            raise ManifestError(
                f"{src}: image listed in the manifest is missing (sample {sample_id}); nothing exported"
            )
        # sample_id is unique in a manifest, so the flat per-class name cannot collide.
        rel = f"{class_folder(expression)}/{sample_id}{src.suffix.lower() or '.png'}"
        placed, sha = place_file(src, out / rel, link=link, hashed=True)
        if sha != expected_sha:
            raise ManifestError(
                f"{src}: sha256 differs from the manifest's (sample {sample_id}): the image changed after it was "
                f"rendered; nothing exported; run `fersynth audit {root}`"
            )
        how[placed] += 1
        names.append(rel)
    return names, how


def _export(
    root: Path,
    out: Path,
    filters: Filters,
    require_pass: bool,
    link: bool,
    allow_rejected: bool,
    extra: Callable[[Path, pd.DataFrame, list[str]], None] | None = None,
) -> dict[str, Any]:
    check_source(root, allow_rejected)
    df = _select(root, filters, require_pass)
    with staged_out(out) as building:
        names, how = _copy_images(root, df, building, link)
        if extra is not None:
            extra(building, df, names)
    return {"out": str(out), "images": len(df), "per_class": _counts(df), **how}


def export_imagefolder(
    root: Path | str,
    out: Path | str,
    filters: Filters = None,
    require_pass: bool = True,
    link: bool = False,
    allow_rejected: bool = False,
) -> dict[str, Any]:
    """Write OUT/<label>_<expression>/<sample_id>.png for the selected rows; returns counts."""
    return _export(Path(root), Path(out), filters, require_pass, link, allow_rejected)


def export_hf(
    root: Path | str,
    out: Path | str,
    filters: Filters = None,
    require_pass: bool = True,
    link: bool = False,
    allow_rejected: bool = False,
) -> dict[str, Any]:
    """An ImageFolder tree plus metadata.parquet and a README with features, loadable by `datasets`."""
    root = Path(root)

    def hf_files(building: Path, df: pd.DataFrame, names: list[str]) -> None:
        meta = pd.DataFrame({"file_name": names, LABEL_COLUMN: df["expression_index"].astype("int64").to_numpy()})
        for col in HF_COLUMNS:
            meta[col] = df[col].to_numpy()
        table = pa.Table.from_pandas(meta, preserve_index=False)
        pq.write_table(table.replace_schema_metadata(hf_label_metadata(EXPRESSIONS)), building / IMAGEFOLDER_METADATA)
        atomic_write_text(building / "README.md", _hf_readme(meta, root))

    return _export(root, Path(out), filters, require_pass, link, allow_rejected, hf_files)


def _counts(df: pd.DataFrame) -> dict[str, int]:
    """Images per expression, in the label order."""
    counts = df["expression"].value_counts()
    return {e: int(counts[e]) for e in EXPRESSIONS if e in counts}


def _hf_readme(meta: pd.DataFrame, root: Path) -> str:
    names = ", ".join(f"{i}={n}" for i, n in enumerate(EXPRESSIONS))
    return (
        f"# {root.name} (fersynth export)\n\n{len(meta)} images, one folder per expression (`<label>_<expression>`); "
        "`metadata.parquet`\npairs each `file_name` with its labels.\n\n"
        "```python\nimport datasets\n"
        'ds = datasets.load_dataset("imagefolder", data_dir="<this folder>", split="train")\n'
        'ds.features["label"]  # ClassLabel: no cast needed\n```\n\n'
        f"`label` is the expression index, the order of every fersynth route: {names}.\n"
    )

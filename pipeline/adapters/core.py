"""The import itself: labels -> splits pre-check -> detect/align/resize -> PNGs -> labels table + report."""

from __future__ import annotations

import hashlib
import io
import re
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageOps

from manifests.labels import LABELS_FILE, SPLITS, LabelsError, read_labels, write_labels
from pipeline.adapters.align import FaceAligner, center_square
from pipeline.adapters.base import ImportOptions, ImportSummary, Item, Listing
from pipeline.adapters.labelmap import DROP
from pipeline.adapters.layouts import LAYOUTS
from pipeline.expressions import EXPRESSION_INDEX, EXPRESSIONS
from pipeline.io_utils import atomic_write_bytes, atomic_write_json, remove_owned, sha256_bytes
from pipeline.splits import SplitError, split_identities

REPORT_FILE = "import_report.json"
FER_SIDE = 48
IMAGES_DIR = "images"
# What an import writes into its output folder; only these are ever removed when replacing it.
_OWNED = (IMAGES_DIR, LABELS_FILE, REPORT_FILE, ".cache")

Progress = Callable[[int, int], None]


class UnknownLabelError(ValueError):
    """A label that is neither one of the seven expressions nor a known label without a class."""


class _Skip(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _check_options(opts: ImportOptions) -> None:
    if opts.size < 16 or opts.size & (opts.size - 1):
        raise ValueError(f"crop size must be a power of two >= 16, got {opts.size}")
    for name in ("val_fraction", "test_fraction"):
        v = getattr(opts, name)
        if not 0.0 <= v < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {v}")
    if not 0.0 <= opts.margin <= 1.0:
        raise ValueError(f"margin must be in [0, 1], got {opts.margin}")


def _prepare_out(out: Path, src: Path, layout: str, overwrite: bool) -> None:
    """Refuse to write over anything that is not an earlier import of this same source."""
    out_r, src_r = out.resolve(), src.resolve()
    if out_r == src_r or src_r.is_relative_to(out_r) or (layout == "folder" and out_r.is_relative_to(src_r)):
        # Replacing `out` would delete the source, or the folder reader would pick up our own output.
        raise ValueError(f"output folder {out} overlaps the source {src}; choose a folder outside it")
    if not out.exists():
        return
    if not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder")
    entries = [p.name for p in out.iterdir()]
    if not entries:
        return
    same = False
    if (out / LABELS_FILE).is_file():
        try:
            _, meta = read_labels(out)
            same = meta.get("layout") == layout and meta.get("source_root") == str(src_r)
            what = f"{meta.get('kind', '?')} dataset from {meta.get('source_root', '?')}"
        except LabelsError:
            what = "an unreadable labels table"
    elif all(e in _OWNED or e.startswith(".tmp-") for e in entries):
        same = True  # leftovers of an interrupted import: nothing of the user's to protect
        what = "an unfinished import"
    else:
        what = f"{len(entries)} other file(s)"
    if not same and not overwrite:
        raise FileExistsError(f"{out} already holds {what}; pass --overwrite to replace it")
    remove_owned(out, _OWNED)


def _assign_splits(ident_split: dict[str, set[str | None]], opts: ImportOptions) -> tuple[dict[str, str], str]:
    """identity -> split; keeps the source's splits when it gives them, else splits by identity.

    With source splits, a split the source lacks (RAF-DB has no val, AffectNet no val) is carved
    from the source's train identities with the requested fraction, so every split is disjoint.
    """
    hints = {h for hs in ident_split.values() for h in hs}
    ids = sorted(ident_split)
    if hints == {None}:
        return split_identities(ids, opts.val_fraction, opts.test_fraction, opts.seed), "identity"
    if None in hints:
        raise ValueError("the source gives a split for some images but not others; cannot keep its splits")
    out: dict[str, str] = {}
    for identity, hs in ident_split.items():
        if len(hs) > 1:
            raise SplitError(f"identity {identity!r} appears in source splits {sorted(hs)}; splits must be disjoint")
        out[identity] = next(iter(hs))  # type: ignore[arg-type]
    missing = {"val": opts.val_fraction, "test": opts.test_fraction}
    carve = {s: f for s, f in missing.items() if s not in hints and f > 0}
    if carve:
        train_ids = [i for i, s in out.items() if s == "train"]
        sub = split_identities(train_ids, carve.get("val", 0.0), carve.get("test", 0.0), opts.seed)
        out.update({i: s for i, s in sub.items() if s != "train"})
    return out, "source"


def _load_image(item: Item) -> Image.Image:
    if item.pixels is not None:
        try:
            vals = np.array(item.pixels.split(), dtype=np.int64)
        except ValueError:
            raise _Skip("unreadable") from None
        # FER2013 (and FER+) rows are exactly 48x48; any other count means a damaged row.
        if len(vals) != FER_SIDE * FER_SIDE or vals.min() < 0 or vals.max() > 255:
            raise _Skip("unreadable")
        return Image.fromarray(vals.reshape(FER_SIDE, FER_SIDE).astype(np.uint8), mode="L").convert("RGB")
    assert item.path is not None
    if not item.path.is_file():
        raise _Skip("missing")
    try:
        with Image.open(item.path) as im:
            im.load()  # decode now so truncated or corrupt files fail here, not later
            # Phone photos store their rotation in EXIF; the face detector needs it upright.
            return ImageOps.exif_transpose(im).convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        raise _Skip("unreadable") from None


_SAFE = re.compile(r"[^A-Za-z0-9_-]+")


def _sample_id(layout: str, key: str) -> str:
    # Readable (from the source name) and unique (hash of the full key), stable across re-imports.
    stem = _SAFE.sub("-", Path(key).stem).strip("-")[:40] or "img"
    return f"{layout}-{stem}-{hashlib.sha1(key.encode()).hexdigest()[:10]}"


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _usable_items(
    listing: Listing, src: Path, layout: str, opts: ImportOptions
) -> tuple[list[Item], Counter[str], Counter[str]]:
    """(items with a usable label, dropped labels, unknown labels); an unknown label is an error
    unless opts.drop_unknown, and no usable item at all is an error."""
    dropped: Counter[str] = Counter()
    unknown: Counter[str] = Counter()
    keep: list[Item] = []
    seen: dict[str, str] = {}
    for item in listing.items:
        if item.key in seen:
            raise ValueError(f"{item.where}: image listed twice (also at {seen[item.key]})")
        seen[item.key] = item.where
        if item.expression is None:
            if not opts.drop_unknown:
                raise UnknownLabelError(
                    f"{item.where}: unknown expression label {item.raw_label!r}; expected one of "
                    f"{', '.join(EXPRESSIONS)} (or a dropped label such as contempt); "
                    "pass --drop-unknown to skip and count such images"
                )
            unknown[item.raw_label] += 1
        elif item.expression == DROP:
            dropped[item.raw_label] += 1
        else:
            keep.append(item)

    if not keep:
        raise ValueError(
            f"{src}: no images with a usable label ({len(listing.items)} listed; dropped {dict(dropped)}, "
            f"unknown {dict(unknown)})"
        )
    # Own-identity images get their sample id as identity: unique and stable.
    for item in keep:
        item.identity = item.identity or _sample_id(layout, item.key)
    return keep, dropped, unknown


def _identity_hints(items: list[Item]) -> dict[str, set[str | None]]:
    """Each identity's split hints from the source layout (None where it has none)."""
    d: dict[str, set[str | None]] = defaultdict(set)
    for it in items:
        d[it.identity].add(it.split)  # type: ignore[index]
    return d


def _write_crops(
    keep: list[Item], out: Path, layout: str, opts: ImportOptions, aligner: Any, progress: Progress | None
) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
    """Aligned (or centre-cropped) PNGs written under out/images: (label rows, skipped by reason)."""
    skipped: dict[str, list[str]] = defaultdict(list)
    rows: list[dict[str, Any]] = []
    for n, item in enumerate(keep, start=1):
        try:
            img = _load_image(item)
            if item.precropped or aligner is None:
                crop = center_square(img, opts.size)
            else:
                found = aligner(img)
                if found is None:
                    raise _Skip("no_face")
                crop = found[0]
        except _Skip as skip:
            skipped[skip.reason].append(item.where)
        else:
            sid = _sample_id(layout, item.key)
            rel = f"{IMAGES_DIR}/{item.expression}/{sid}.png"
            data = _png_bytes(crop)
            atomic_write_bytes(out / rel, data)
            rows.append(
                {
                    "sample_id": sid,
                    "path": rel,
                    "identity": item.identity,
                    "expression": item.expression,
                    "expression_index": EXPRESSION_INDEX[item.expression],  # type: ignore[index]
                    "intensity": None,
                    "aus": None,
                    "identity_factors": None,
                    "nuisance": None,
                    "split": item.split,
                    "sha256": sha256_bytes(data),
                    "width": opts.size,
                    "height": opts.size,
                    "source": layout,
                    "original_path": str(item.path) if item.path is not None else item.where,
                }
            )
        if progress is not None:
            progress(n, len(keep))
    return rows, skipped


def _split_counts(df: pd.DataFrame) -> tuple[dict, dict[str, int], list[str]]:
    """Images per split and expression, per expression, and warnings for empty classes or splits."""
    counts = {s: {e: int(((df["split"] == s) & (df["expression"] == e)).sum()) for e in EXPRESSIONS} for s in SPLITS}
    class_counts = {e: int((df["expression"] == e).sum()) for e in EXPRESSIONS}
    warnings = [f"class {e!r} has no images after import" for e, c in class_counts.items() if c == 0]
    for s in SPLITS:
        if sum(counts[s].values()) == 0:
            warnings.append(f"split {s!r} has no images")
    return counts, class_counts, warnings


def _labels_meta(summary: ImportSummary, opts: ImportOptions, splits_from: str) -> dict[str, Any]:
    """The import's provenance as stored beside labels.parquet."""
    meta = {
        "kind": summary.kind,
        "layout": summary.layout,
        "source_root": summary.source_root,
        "crop_size": opts.size,
        "aligned_with": summary.aligned_with,
        "margin": opts.margin if summary.aligned_with != "none" else None,
        "splits_from": splits_from,
        "seed": opts.seed,
        "val_fraction": opts.val_fraction,
        "test_fraction": opts.test_fraction,
        "dropped_labels": summary.dropped,
        "unknown_labels": summary.unknown,
        "skipped_counts": {k: len(v) for k, v in summary.skipped.items()},
        "excluded": summary.excluded,
    }
    return meta


def import_dataset(
    layout: str,
    src: Path,
    out: Path,
    opts: ImportOptions | None = None,
    progress: Progress | None = None,
) -> ImportSummary:
    """Import a user dataset into `out`: aligned PNG crops under out/images, labels.parquet, import_report.json.

    Raises UnknownLabelError (unless opts.drop_unknown), SplitError when the identities cannot be
    split, FileExistsError when `out` holds something else (unless opts.overwrite).
    """
    t0 = time.perf_counter()
    opts = opts or ImportOptions()
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    _check_options(opts)
    src, out = Path(src), Path(out)
    if not src.exists():
        raise FileNotFoundError(f"{src}: no such file or folder")
    spec = LAYOUTS[layout]
    listing = spec.reader(src, opts)

    # 1. Labels: decide every item before any image work so label errors come first.
    keep, dropped, unknown = _usable_items(listing, src, layout, opts)

    # 2. Split feasibility on the listed identities: fail before minutes of face detection.
    _assign_splits(_identity_hints(keep), opts)

    _prepare_out(out, src, layout, opts.overwrite)
    uses_detector = opts.detect and any(not it.precropped for it in keep)
    aligner = (
        FaceAligner(opts.size, margin=opts.margin, device=opts.device, min_prob=opts.min_face_prob)
        if uses_detector
        else None
    )

    # 3. Images.
    rows, skipped = _write_crops(keep, out, layout, opts, aligner, progress)
    if not rows:
        raise ValueError(
            f"{src}: no images could be imported ({len(listing.items)} listed; skipped: "
            f"{ {k: len(v) for k, v in skipped.items()} }, dropped: {dict(dropped)})"
        )

    # 4. Splits on the identities that survived (skips can empty an identity).
    df = pd.DataFrame(rows)
    written = set(df["sample_id"])
    survivors = _identity_hints([it for it in keep if _sample_id(layout, it.key) in written])
    id_split, splits_from = _assign_splits(survivors, opts)
    df["split"] = df["identity"].map(id_split)

    counts, class_counts, warnings = _split_counts(df)
    aligned_with = "mtcnn" if aligner is not None else "none"
    summary = ImportSummary(
        out=str(out),
        layout=layout,
        kind=spec.kind,
        source_root=str(src.resolve()),
        crop_size=opts.size,
        aligned_with=aligned_with,
        splits_from=splits_from,
        n_listed=len(listing.items),
        n_images=len(df),
        n_identities=int(df["identity"].nunique()),
        counts=counts,
        class_counts=class_counts,
        skipped={k: sorted(v) for k, v in sorted(skipped.items())},
        dropped=dict(sorted(dropped.items())),
        unknown=dict(sorted(unknown.items())),
        excluded=dict(sorted(listing.excluded.items())),
        warnings=warnings,
        seconds=round(time.perf_counter() - t0, 3),
    )
    meta = _labels_meta(summary, opts, splits_from)
    # Row order: by split then path, so the table (and the tensor cache built from it) is deterministic.
    df = df.sort_values(["split", "path"], kind="stable").reset_index(drop=True)
    write_labels(out, df, meta)
    atomic_write_json(out / REPORT_FILE, summary.to_dict())
    return summary

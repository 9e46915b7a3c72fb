"""Readers that list a user's dataset as Items (labels and where each image is), one per layout.

Readers never decode images: listing is cheap, so label errors surface before minutes of face
detection. Unknown labels are passed on with expression=None and the core decides (error or count).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pipeline.adapters.base import IMAGE_EXTS, SPLIT_ALIASES, ImportOptions, Item, Listing
from pipeline.adapters.labelmap import (
    AFFECTNET_CODES,
    CKPLUS_CODES,
    FER2013_CODES,
    KDEF_CODES,
    RAFDB_CODES,
    map_code,
    map_name,
)


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTS and not p.name.startswith(".")


def _subdirs(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if _is_image(p))


def _rel(p: Path, root: Path) -> str:
    try:
        return p.relative_to(root).as_posix()
    except ValueError:
        return p.as_posix()


class _IdentityFromName:
    """Identity from a file name with a user regex: the 'identity' group, else group 1, else the match."""

    def __init__(self, pattern: str | None) -> None:
        self.rx = re.compile(pattern) if pattern else None

    def __call__(self, path: Path) -> str | None:
        if self.rx is None:
            return None
        m = self.rx.search(path.name)
        if m is None:
            raise ValueError(f"{path}: file name does not match --identity-regex {self.rx.pattern!r}")
        if "identity" in self.rx.groupindex:
            return m.group("identity")
        return m.group(1) if self.rx.groups else m.group(0)


def _read_csv(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such CSV file")
    # Strings throughout: labels like "03" or "NA" must not be reinterpreted by pandas.
    return pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)


def _need_columns(df: pd.DataFrame, path: Path, cols: Iterable[str]) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; columns are {list(df.columns)}")


# --- folder per expression ---------------------------------------------------------------------


def read_folder(src: Path, opts: ImportOptions) -> Listing:
    """root/<expression>/*, or root/<split>/<expression>/*, or root/<identity>/<expression>/*.

    The layout is recognised from the tree: expression folders hold images directly; otherwise each
    top folder holds expression folders and is a split when every top name is a split name
    (train/val/test/...), else an identity.
    """
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: not a folder")
    top = _subdirs(src)
    if not top:
        raise ValueError(f"{src}: no sub-folders; expected <root>/<expression>/<images>")
    ident_of = _IdentityFromName(opts.identity_regex)
    groups: list[tuple[Path, str | None, str | None]] = []  # (expression dir, split, identity)
    if any(_images(d) for d in top):
        groups = [(d, None, None) for d in top]
    else:
        by_split = all(d.name.lower() in SPLIT_ALIASES for d in top)
        for d in top:
            for e in _subdirs(d):
                if by_split:
                    groups.append((e, SPLIT_ALIASES[d.name.lower()], None))
                else:
                    groups.append((e, None, d.name))
    items: list[Item] = []
    for exp_dir, split, folder_identity in groups:
        mapped = map_name(exp_dir.name)
        for p in _images(exp_dir):
            rel = _rel(p, src)
            identity = ident_of(p) or folder_identity
            items.append(
                Item(
                    where=str(p),
                    key=rel,
                    raw_label=exp_dir.name,
                    expression=mapped,
                    identity=identity,
                    split=split,
                    path=p,
                )
            )
    return Listing(items)


# --- CSV of path, identity, expression ---------------------------------------------------------


def read_csv_layout(src: Path, opts: ImportOptions) -> Listing:
    """A CSV with an image path (relative to the CSV), an optional identity and an expression name."""
    df = _read_csv(src)
    path_col = opts.path_col or "path"
    exp_col = opts.expression_col or "expression"
    id_col = opts.identity_col or "identity"
    _need_columns(df, src, [path_col, exp_col])
    if opts.identity_col and id_col not in df.columns:
        raise ValueError(f"{src}: missing identity column {id_col!r}; columns are {list(df.columns)}")
    has_id = id_col in df.columns
    base = opts.images_dir or src.parent
    ident_of = _IdentityFromName(opts.identity_regex)
    items = []
    for i, rec in enumerate(df.to_dict("records")):
        rel = str(rec[path_col]).strip()
        label = str(rec[exp_col]).strip()
        p = base / rel
        identity = (str(rec[id_col]).strip() or None) if has_id else None
        if identity is None and opts.identity_regex:
            identity = ident_of(p)
        items.append(
            Item(
                where=f"{src} line {i + 2} ({rel})",
                key=rel,
                raw_label=label,
                expression=map_name(label),
                identity=identity,
                path=p,
            )
        )
    return Listing(items)


# --- FER2013 -------------------------------------------------------------------------------------

FER_USAGE = {"training": "train", "publictest": "val", "privatetest": "test"}


def read_fer2013(src: Path, opts: ImportOptions) -> Listing:
    """fer2013.csv: emotion (0..6), pixels (48x48 gray, space separated), Usage (kept as the split)."""
    if src.is_dir():
        src = src / "fer2013.csv"
    df = _read_csv(src)
    _need_columns(df, src, ["emotion", "pixels"])
    has_usage = "Usage" in df.columns
    items = []
    for i, (emotion, pixels) in enumerate(zip(df["emotion"], df["pixels"], strict=True)):
        where = f"{src} line {i + 2}"
        split = None
        if has_usage:
            usage = str(df["Usage"].iat[i]).strip()
            split = FER_USAGE.get(usage.lower())
            if split is None:
                raise ValueError(f"{where}: unknown Usage {usage!r}; expected Training, PublicTest or PrivateTest")
        name, mapped = map_code(emotion, FER2013_CODES)
        items.append(
            Item(
                where=where,
                key=f"row{i:06d}",
                raw_label=name,
                expression=mapped,
                split=split,
                pixels=pixels,
                precropped=True,
            )
        )
    return Listing(items)


# --- RAF-DB --------------------------------------------------------------------------------------


def _find_file(src: Path, name: str) -> Path:
    if src.is_file():
        return src
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: no such file or folder")
    found = sorted(src.rglob(name))
    if not found:
        raise FileNotFoundError(f"{src}: no {name} found under it")
    return found[0]


def _aligned_variant(name: str) -> str:
    p = Path(name)
    return f"{p.stem}_aligned{p.suffix}"


def _pick_image_dir(candidates: list[Path], names: list[str], what: str) -> Path:
    """The candidate folder holding most of the first listed images (RAF-DB ships several image trees)."""
    probe = names[:20]
    best, best_hits = None, 0
    for d in candidates:
        if not d.is_dir():
            continue
        hits = sum((d / n).is_file() or (d / _aligned_variant(n)).is_file() for n in probe)
        if hits > best_hits:
            best, best_hits = d, hits
    if best is None:
        raise FileNotFoundError(
            f"cannot find the images of {what} (looked in {[str(c) for c in candidates]}); pass --images DIR"
        )
    return best


def read_rafdb(src: Path, opts: ImportOptions) -> Listing:
    """RAF-DB basic: list_patition_label.txt lines 'train_00001.jpg 5'; train_/test_ prefixes are the splits."""
    label_file = _find_file(src, "list_patition_label.txt")
    rows: list[tuple[int, str, str]] = []
    for n, line in enumerate(label_file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{label_file} line {n}: expected 'image_name label', got {line!r}")
        rows.append((n, parts[0], parts[1]))
    d = label_file.parent
    if opts.images_dir:
        img_dir = opts.images_dir
    else:
        cands = [d, d / "Image" / "original", d / "Image" / "aligned", d.parent / "Image" / "original"]
        cands += [d.parent / "Image" / "aligned", d / "images", d.parent / "images", d.parent]
        img_dir = _pick_image_dir(cands, [r[1] for r in rows], str(label_file))
    items = []
    for n, name, code in rows:
        p = img_dir / name
        if not p.is_file() and (img_dir / _aligned_variant(name)).is_file():
            p = img_dir / _aligned_variant(name)
        prefix = name.split("_", 1)[0].lower()
        label, mapped = map_code(code, RAFDB_CODES)
        items.append(
            Item(
                where=f"{label_file} line {n} ({name})",
                key=name,
                raw_label=label,
                expression=mapped,
                split=SPLIT_ALIASES.get(prefix),
                path=p,
            )
        )
    return Listing(items)


# --- AffectNet -----------------------------------------------------------------------------------


def read_affectnet(src: Path, opts: ImportOptions) -> Listing:
    """AffectNet's training.csv / validation.csv (subDirectory_filePath, ..., expression code 0..10).

    The validation set is AffectNet's customary test set, so validation.csv -> test and
    training.csv -> train; val is then carved from train by the core. The CSV's face boxes are not
    used: every photo goes through the same MTCNN alignment as other layouts.
    """
    if src.is_dir():
        csvs = sorted(p for p in src.iterdir() if p.suffix.lower() == ".csv")
        if not csvs:
            raise FileNotFoundError(f"{src}: no AffectNet CSV (training.csv / validation.csv) in it")
    else:
        csvs = [src]
    path_col = opts.path_col or "subDirectory_filePath"
    exp_col = opts.expression_col or "expression"
    items = []
    for csv in csvs:
        df = _read_csv(csv)
        _need_columns(df, csv, [path_col, exp_col])
        base = opts.images_dir
        if base is None:
            base = csv.parent / "Manually_Annotated_Images"
            base = base if base.is_dir() else csv.parent
        stem = csv.stem.lower()
        split = "test" if "valid" in stem else "train" if "train" in stem else None
        for i, (rel, code) in enumerate(zip(df[path_col], df[exp_col], strict=True)):
            label, mapped = map_code(code, AFFECTNET_CODES)
            items.append(
                Item(
                    where=f"{csv} line {i + 2} ({rel})",
                    key=f"{csv.stem}/{rel}",
                    raw_label=label,
                    expression=mapped,
                    split=split,
                    path=base / rel,
                )
            )
    return Listing(items)


# --- CK+ -----------------------------------------------------------------------------------------


def read_ckplus(src: Path, opts: ImportOptions) -> Listing:
    """CK+: Emotion/S005/001/S005_001_00000011_emotion.txt labels the last (peak) frame of a sequence.

    Images are looked up in cohn-kanade-images/ with the same relative path. With
    ck_first_frame_neutral (the usual practice) the first frame of each labelled sequence is added
    as neutral, since CK+ labels almost no neutral frames itself. Identity is the subject (S005).
    """
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: not a folder")
    label_files = sorted(src.rglob("*_emotion.txt"))
    if not label_files:
        raise FileNotFoundError(f"{src}: no CK+ *_emotion.txt label files under it")
    if opts.images_dir:
        img_root = opts.images_dir
    else:
        roots = sorted(p for p in src.rglob("cohn-kanade-images") if p.is_dir())
        img_root = roots[0] if roots else src
    items = []
    seen: set[str] = set()
    for lf in label_files:
        seq = lf.parent  # .../Emotion/S005/001
        subject, session = seq.parent.name, seq.name
        frame = lf.name.removesuffix("_emotion.txt")
        text = lf.read_text(encoding="utf-8").strip()
        label, mapped = map_code(text, CKPLUS_CODES)
        seq_dir = img_root / subject / session
        peak = next(
            (seq_dir / f"{frame}{ext}" for ext in (".png", ".jpg") if (seq_dir / f"{frame}{ext}").is_file()), None
        )
        peak = peak or seq_dir / f"{frame}.png"
        key = f"{subject}/{session}/{peak.name}"
        items.append(Item(where=str(lf), key=key, raw_label=label, expression=mapped, identity=subject, path=peak))
        seen.add(key)
        if opts.ck_first_frame_neutral and seq_dir.is_dir():
            frames = _images(seq_dir)
            if frames and frames[0] != peak:
                k0 = f"{subject}/{session}/{frames[0].name}"
                if k0 not in seen:
                    seen.add(k0)
                    items.append(
                        Item(
                            where=str(frames[0]),
                            key=k0,
                            raw_label="neutral (first frame)",
                            expression="neutral",
                            identity=subject,
                            path=frames[0],
                        )
                    )
    return Listing(items)


# --- KDEF ----------------------------------------------------------------------------------------

KDEF_NAME = re.compile(
    r"^(?P<session>[AB])(?P<sex>[FM])(?P<id>\d{2})(?P<exp>AF|AN|DI|HA|NE|SA|SU)(?P<pose>S|HL|HR|FL|FR)$"
)


def read_kdef(src: Path, opts: ImportOptions) -> Listing:
    """KDEF: AF01ANS.JPG = session A, female 01, angry, straight. Identity is sex+id (both sessions).

    Only the poses in kdef_poses are kept (default straight, where frontal-face detection is
    reliable); the others are counted as excluded, not skipped.
    """
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: not a folder")
    poses = {p.upper() for p in opts.kdef_poses}
    items = []
    excluded: Counter[str] = Counter()
    for p in sorted(q for q in src.rglob("*") if _is_image(q)):
        rel = _rel(p, src)
        m = KDEF_NAME.match(p.stem.upper())
        if m is None:
            items.append(
                Item(where=str(p), key=rel, raw_label=f"unparseable KDEF name {p.name}", expression=None, path=p)
            )
            continue
        if m["pose"] not in poses:
            excluded[f"pose {m['pose']}"] += 1
            continue
        label = KDEF_CODES[m["exp"]]
        items.append(
            Item(
                where=str(p),
                key=rel,
                raw_label=label,
                expression=map_name(label),
                identity=f"{m['sex']}{m['id']}",
                path=p,
            )
        )
    return Listing(items, excluded)


@dataclass(frozen=True)
class Layout:
    reader: Callable[[Path, ImportOptions], Listing]
    kind: str  # labels-table metadata "kind"
    help: str


LAYOUTS: dict[str, Layout] = {
    "folder": Layout(read_folder, "photos", "root/<expression>/*.jpg (or root/<split|identity>/<expression>/)"),
    "csv": Layout(read_csv_layout, "photos", "CSV of path,identity,expression (paths relative to the CSV)"),
    "fer2013": Layout(read_fer2013, "fer2013", "fer2013.csv: emotion,pixels,Usage"),
    "rafdb": Layout(read_rafdb, "rafdb", "RAF-DB list_patition_label.txt (+ Image/original or aligned)"),
    "affectnet": Layout(read_affectnet, "affectnet", "AffectNet training.csv / validation.csv"),
    "ckplus": Layout(read_ckplus, "ckplus", "CK+ Emotion/ labels + cohn-kanade-images/"),
    "kdef": Layout(read_kdef, "kdef", "KDEF folders of AF01ANS.JPG-style files"),
}

"""What every layout reader produces, and the options and summary of an import."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm"})

# Split folder names and split column values seen in the wild, mapped to ours.
SPLIT_ALIASES: dict[str, str] = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "publictest": "val",
    "test": "test",
    "testing": "test",
    "privatetest": "test",
}


@dataclass
class Item:
    """One source image with its raw label, before any image is decoded.

    `expression` is the canonical name, labelmap.DROP, or None when the raw label is unknown.
    Exactly one of `path` (an image file) and `pixels` (FER2013's space-separated gray values) is set.
    """

    where: str  # for messages and `original_path`: the file, or "file.csv line N"
    key: str  # unique within the import, stable across runs; the sample id is derived from it
    raw_label: str
    expression: str | None
    identity: str | None = None  # None: the image is its own identity
    split: str | None = None  # a split the source prescribes, else None
    path: Path | None = None
    pixels: str | None = None
    precropped: bool = False  # already a face crop: resize only, never detect


@dataclass
class Listing:
    """A reader's result: the items, plus images it left out on purpose (e.g. KDEF profile poses)."""

    items: list[Item]
    excluded: Counter[str] = field(default_factory=Counter)


@dataclass
class ImportOptions:
    """Options of `import_dataset`; column names left as None take the layout's defaults."""

    size: int = 64
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 0
    detect: bool = True
    margin: float = 0.25  # face-box side fraction added on each side of the crop
    min_face_prob: float = 0.9
    overwrite: bool = False
    drop_unknown: bool = False
    identity_regex: str | None = None
    path_col: str | None = None
    identity_col: str | None = None
    expression_col: str | None = None
    images_dir: Path | None = None
    kdef_poses: tuple[str, ...] = ("S",)
    ck_first_frame_neutral: bool = True
    device: str = "auto"


@dataclass
class ImportSummary:
    """What an import did; also written as `import_report.json` beside `labels.parquet`."""

    out: str
    layout: str
    kind: str
    source_root: str
    crop_size: int
    aligned_with: str
    splits_from: str  # "identity" (split_identities) or "source" (the dataset's own splits kept)
    n_listed: int
    n_images: int
    n_identities: int
    counts: dict[str, dict[str, int]]  # split -> expression -> images
    class_counts: dict[str, int]
    skipped: dict[str, list[str]]  # reason (missing / unreadable / no_face) -> source paths
    dropped: dict[str, int]  # labels without a class here (contempt, none, ...) -> images
    unknown: dict[str, int]  # unknown labels skipped because of drop_unknown -> images
    excluded: dict[str, int]  # left out on purpose by the layout (e.g. KDEF poses)
    warnings: list[str]
    seconds: float

    @property
    def n_skipped(self) -> int:
        return sum(len(v) for v in self.skipped.values())

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["n_skipped"] = self.n_skipped
        return d

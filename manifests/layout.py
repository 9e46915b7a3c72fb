"""Where a dataset's files lie: the manifest shards and the marker files beside them.

Shared by the writer, the card, the reader and the audit, so that none of them imports another for a name.
"""

from __future__ import annotations

import re
from pathlib import Path

from manifests.schema import MANIFEST_DIR

COMMON_METADATA = "_common_metadata"
IMAGEFOLDER_METADATA = "metadata.parquet"
SUCCESS_MARKER = "_SUCCESS"
# The dataset card (manifests.card writes them).
CARD_JSON = "dataset_card.json"
CARD_MD = "README.md"
CROISSANT = "croissant.json"
SHARD_RE = re.compile(r"^part-(\d{5})-of-(\d{5})\.parquet$")
# The prefix of every unfinished atomic write (pipeline.io_utils.atomic_path): never part of a dataset.
TEMP_PREFIX = ".tmp-"

# What the generator keeps with a dataset besides the manifest and the card: its sweep plan
# (pipeline.generate.plan), the quality report folder (pipeline.quality.report writes these names)
# and, in staging only, the marker of a rejected dataset.
PLAN_FILE = "plan.json"
CODES_FILE = "identity_codes.npy"
REJECTED_MARKER = "REJECTED"
# The usefulness gate's figures, kept so that re-judging the same passing renders retrains nothing.
USEFULNESS_FILE = "usefulness.json"
# Report and grid live under a "__" name: Hugging Face `datasets` skips such folders when it looks
# for images, so the report's figures never turn up as extra (unlabelled) dataset images.
REPORT_DIR = "__quality_report"
GRID_FILE = "sample_grid.png"
REPORT_FILES = (
    "report.md",
    "identity_hist.png",
    "expression_hist.png",
    "best.png",
    "worst.png",
    "usefulness_confusion.png",
    GRID_FILE,
)
# Files `finalize` hashes into _SUCCESS when present, so the audit can tell any later edit: everything a
# reader or tool uses besides the images and shards (whose hashes live in the manifest and _SUCCESS).
# Not here: _SUCCESS itself, and REJECTED, which is written after a verdict and checked against the card.
HASHED_FILES = (
    IMAGEFOLDER_METADATA,
    f"{MANIFEST_DIR}/{COMMON_METADATA}",
    CARD_JSON,
    CARD_MD,
    CROISSANT,
    PLAN_FILE,
    CODES_FILE,
    USEFULNESS_FILE,
    *(f"{REPORT_DIR}/{name}" for name in REPORT_FILES),
)


def shard_name(shard_index: int, n_shards: int) -> str:
    return f"part-{shard_index:05d}-of-{n_shards:05d}.parquet"


def shard_path(root: Path, shard_index: int, n_shards: int) -> Path:
    return Path(root) / MANIFEST_DIR / shard_name(shard_index, n_shards)


def list_shards(root: Path) -> list[tuple[int, int, Path]]:
    """(index, count, path) of every finished shard file under DIR/data, sorted by index."""
    data = Path(root) / MANIFEST_DIR
    if not data.is_dir():
        return []
    found = []
    for p in data.iterdir():
        m = SHARD_RE.match(p.name)
        if m:
            found.append((int(m.group(1)), int(m.group(2)), p))
    return sorted(found)

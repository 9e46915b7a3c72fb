"""A dataset's status from its files alone: published, rejected or unfinished, and the one line that says why.

Every reader (tstr, export-dataset, audit) asks here, so a rejected or half-judged set is named the same
way wherever it is read. The status files are `_SUCCESS` (written last by `finalize`) and `REJECTED`
(written before `_SUCCESS` when a set fails its gates), with the card's `status` as the record of the verdict.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from manifests.layout import CARD_JSON, REJECTED_MARKER, SUCCESS_MARKER, list_shards
from manifests.schema import ManifestError
from pipeline.io_utils import sha256_file

PUBLISHED, REJECTED, UNFINISHED = "published", "rejected", "unfinished"
ALLOW_FLAG = "--allow-rejected"


class DatasetStatusError(ManifestError):
    """A dataset that is not published was about to be used as one."""


@dataclass(frozen=True)
class DatasetStatus:
    state: str  # published | rejected | unfinished
    reason: str  # one line naming the file that says so; empty when published

    @property
    def published(self) -> bool:
        return self.state == PUBLISHED


def read_status(root: Path) -> DatasetStatus:
    """What the status files of `root` say; a REJECTED file wins over everything (the safe reading)."""
    root = Path(root)
    marker = root / REJECTED_MARKER
    if marker.exists():
        return DatasetStatus(REJECTED, f"{marker}: {rejection_message(marker)}")
    if not (root / SUCCESS_MARKER).is_file():
        return DatasetStatus(UNFINISHED, f"{root}: no {SUCCESS_MARKER}: the run that writes it did not finish")
    if card_status(root) == REJECTED:
        return DatasetStatus(REJECTED, f"{root / CARD_JSON}: status is 'rejected' (and no {REJECTED_MARKER} file)")
    return DatasetStatus(PUBLISHED, "")


def rejection_message(marker: Path) -> str:
    """The REJECTED file's own message (it is JSON with a "message"), or a plain note when unreadable."""
    try:
        message = json.loads(marker.read_text(encoding="utf-8")).get("message")
    except (OSError, ValueError, AttributeError):
        message = None
    return " ".join(str(message).split()) if message else "the dataset failed its quality gates"


def card_status(root: Path) -> Any:
    """The card's `status` field; None when there is no readable card (the audit reports that itself)."""
    try:
        return json.loads((Path(root) / CARD_JSON).read_text(encoding="utf-8")).get("status")
    except (OSError, ValueError, AttributeError):
        return None


def require_published(root: Path, allow_rejected: bool, use: str) -> DatasetStatus:
    """The status of `root`; raises DatasetStatusError naming why unless it is published or `allow_rejected`."""
    if not Path(root).is_dir():
        raise DatasetStatusError(f"{root}: no such dataset folder")
    status = read_status(root)
    if not status.published and not allow_rejected:
        raise DatasetStatusError(
            f"{use} refuses a {status.state} dataset: {status.reason}; pass {ALLOW_FLAG} to use it anyway"
        )
    return status


def changed_shards(root: Path) -> list[Path]:
    """Shards whose sha256 is not the one _SUCCESS recorded (or that it does not list); [] without a _SUCCESS."""
    try:
        recorded = json.loads((Path(root) / SUCCESS_MARKER).read_text(encoding="utf-8")).get("shards", {})
    except (OSError, ValueError, AttributeError):
        return []
    return [p for _, _, p in list_shards(root) if recorded.get(p.name) != sha256_file(p)]

"""Publish a judged dataset, or mark it rejected; finish or undo an `--overwrite` a crash interrupted.

Publishing never shows a half dataset: the folder appears under its final name complete, with
`_SUCCESS`, and holding nothing the manifest does not account for. A folder under the final name that
holds another dataset is only replaced after the new dataset has passed its gates, through a journal
that lets the next run finish or undo a replacement a crash interrupted (`recover_publish`).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from manifests.layout import REJECTED_MARKER, SUCCESS_MARKER, TEMP_PREFIX
from manifests.writer import read_shards_table
from pipeline.audit import unaccounted_files
from pipeline.io_utils import atomic_write_json

STAGING_DIR = ".staging"
log = logging.getLogger(__name__)


class GenerateError(RuntimeError):
    """Generation could not run to a verdict (the message says what to fix)."""


def write_status(staging: Path, verdict: dict[str, Any], finalize_now: Callable[[], Any]) -> None:
    """Finalize with the status files in an order a kill cannot make look finished and good.

    finalize removes _SUCCESS first and writes it last. A rejection writes REJECTED before that, so the
    set reads rejected from then on; a pass removes an old REJECTED only after the new _SUCCESS, so until
    then it still reads rejected (or unfinished): a kill leaves the old status or the new, never a good-looking set.
    """
    marker = staging / REJECTED_MARKER
    if not verdict["passed"]:
        atomic_write_json(marker, rejection_record(verdict))
    finalize_now()
    if verdict["passed"]:
        marker.unlink(missing_ok=True)


def rejection_record(verdict: dict[str, Any]) -> dict[str, Any]:
    """What REJECTED holds: the failed gates in one message, each gate, and where the report is."""
    return {
        "message": f"rejected: {verdict['failed_message']}",
        "failed_gates": [g for g in verdict["gates"] if g.get("enforced", True) and not g["passed"]],
        "report": verdict.get("report"),
    }


def publish(staging: Path, final: Path, verdict: dict[str, Any], overwrite: bool = False) -> Path:
    """Move a passing dataset to its final name; mark a failing one REJECTED in staging.

    The caller holds the dataset lock. Only what the manifest and the dataset files account for is
    published: leftovers of killed writes are swept, any other stray file is refused. Replacing a
    published dataset (`overwrite`) goes through a journal, so a crash at any point is repaired by
    the next run that touches the dataset (`recover_publish`).
    """
    staging, final = Path(staging), Path(final)
    marker = staging / REJECTED_MARKER
    if not verdict["passed"]:
        atomic_write_json(marker, rejection_record(verdict))  # finish wrote it already; the same bytes again
        return staging
    marker.unlink(missing_ok=True)
    sweep_strays(staging)
    if not final.exists():
        os.replace(staging, final)
        return final
    if not overwrite:
        raise FileExistsError(f"{final} already exists; pass --overwrite to replace it")
    _replace_published(staging, final)
    return final


def sweep_strays(staging: Path) -> None:
    """Remove unfinished writes and unlisted images from a finished staging folder; refuse any other stray file."""
    listed = read_shards_table(staging).column("file_name").to_pylist()
    strays = unaccounted_files(staging, listed)
    owned = [r for r in strays if Path(r).name.startswith(TEMP_PREFIX) or r.startswith("images/")]
    for rel in owned:
        (staging / rel).unlink(missing_ok=True)
    foreign = [r for r in strays if r not in owned]
    if foreign:
        raise GenerateError(
            f"{staging}: not publishing: {len(foreign)} file(s) the manifest does not list: {', '.join(foreign[:10])}; "
            "remove them and rerun"
        )


def publish_journal(final: Path) -> Path:
    """The journal of an `--overwrite` publish of `final`: in OUT/.staging, never inside a dataset."""
    return final.parent / STAGING_DIR / f".{final.name}.publish.json"


def _replace_published(staging: Path, final: Path) -> None:
    # Journal first: from here on a crash leaves enough on disk for recover_publish to finish the job.
    old = staging.parent / f".old-{final.name}-{uuid.uuid4().hex[:8]}"  # recover_publish knows this pattern
    journal = publish_journal(final)
    atomic_write_json(journal, {"final": final.name, "old": old.name, "new": staging.name})
    os.replace(final, old)
    os.replace(staging, final)
    shutil.rmtree(old)
    journal.unlink()


def recover_publish(staging: Path, final: Path) -> str | None:
    """Finish or undo an `--overwrite` publish a crash interrupted; returns what was done, or None.

    Between the two renames the final name is empty: the new dataset (complete in staging) is moved
    in; if it is not complete, the old one is moved back. Any `.old-<name>-*` copy left once the
    final name holds a dataset is removed (also those of versions that kept no journal).
    """
    journal = publish_journal(final)
    own_old = re.compile(rf"\.old-{re.escape(final.name)}-[0-9a-f]{{8}}")  # not those of `<name>-2`
    olds = sorted(
        (p for p in staging.parent.glob(f".old-{final.name}-*") if own_old.fullmatch(p.name)),
        key=lambda p: p.stat().st_mtime,
    )
    if not journal.is_file() and not olds:
        return None
    done = "removed the old copy left by an interrupted --overwrite" if olds else "cleared an unstarted --overwrite"
    if not final.exists():
        new_complete = (staging / SUCCESS_MARKER).is_file() and not (staging / REJECTED_MARKER).exists()
        if journal.is_file() and new_complete:
            os.replace(staging, final)
            done = "finished an interrupted --overwrite: the new dataset is published"
        elif olds:
            os.replace(olds.pop(), final)
            done = "undid an interrupted --overwrite: the old dataset is back"
    for old in olds:
        if old.exists():
            shutil.rmtree(old)
    journal.unlink(missing_ok=True)
    log.warning("%s: %s", final, done)
    return done

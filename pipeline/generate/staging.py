"""Set up or resume a dataset's staging folder (OUT/.staging/<name>) and say which of its shards still need work.

One run at a time writes a dataset: `prepare` takes its lock (OUT/.staging/.<name>.lock, see
pipeline.locks) and a second run of the same dataset refuses at once, naming the first.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from manifests.layout import TEMP_PREFIX, shard_path
from manifests.reader import read_dataset_meta
from pipeline.audit import audit_dataset, unaccounted_files
from pipeline.config import Config, config_to_dict
from pipeline.generate.plan import SweepPlan, load_plan, plan_key_of, save_plan, update_plan_meta
from pipeline.generate.publishing import STAGING_DIR, recover_publish
from pipeline.generate.shards import why_render
from pipeline.io_utils import place_file
from pipeline.locks import WriterLock
from pipeline.preflight import readable_file, writable_folder


@dataclass
class Prepared:
    name: str
    staging: Path
    final: Path
    plan_key: str
    n_items: int
    n_shards: int
    published: bool  # the final folder already holds this very dataset: nothing to do
    lock: WriterLock | None = None  # the dataset's one-writer lock, held from `prepare` on

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()


def dataset_lock(out: Path, name: str) -> WriterLock:
    """The (not yet acquired) one-writer lock of dataset `name` under `out`: beside its staging folder, never in it."""
    return WriterLock(Path(out) / STAGING_DIR / name, f"generation of dataset {name!r}")


def check_dataset_name(name: str) -> str:
    if "/" in name or name.startswith((".", "_")) or not name.strip():
        raise ValueError(f"dataset name {name!r} must be a plain folder name (no '/', not hidden)")
    return name


def preflight_generate(checkpoint: Path, out: Path) -> None:
    """The checkpoint can be read and OUT written: checked before the checkpoint is even loaded."""
    readable_file(checkpoint, "--checkpoint")
    writable_folder(out, "--out")


def stage(cfg: Config, plan: SweepPlan, out: Path, name: str, overwrite: bool) -> Prepared:
    """Set up or resume the staging folder of `plan` (the caller holds the dataset lock)."""
    plan.meta["name"] = name
    staging, final = out / STAGING_DIR / name, out / name
    recover_publish(staging, final)
    if final.exists():
        if plan_key_of(final) == plan.key and (final / "_SUCCESS").is_file() and _judged_alike(final, cfg):
            damage = published_damage(final)
            if damage is None:
                return Prepared(name, staging, final, plan.key, len(plan.items), plan.n_shards, published=True)
            if not overwrite:
                raise FileExistsError(
                    f"{final}: the published dataset is damaged ({damage}); pass --overwrite to render it again "
                    f"(it is replaced only once the new one passes its gates); `fersynth audit {final}` lists every problem"
                )
        elif not overwrite:
            raise FileExistsError(
                f"{final} already holds another dataset (or this one judged with other thresholds, or files that are not "
                "a dataset); choose another name/--out "
                "or pass --overwrite (it is replaced only once the new dataset passes its gates)"
            )
    if overwrite and final.exists() and plan_key_of(final) == plan.key:
        _stage_published_renders(final, staging, plan)
    if staging.exists():
        old = plan_key_of(staging)
        if old != plan.key and any(staging.iterdir()):
            if not overwrite:
                raise FileExistsError(
                    f"{staging} holds an unfinished or rejected dataset of another plan"
                    f" ({'key ' + old[:10] if old else 'no plan.json'}); pass --overwrite to discard it"
                )
            shutil.rmtree(staging)
    staging.mkdir(parents=True, exist_ok=True)
    if plan_key_of(staging) != plan.key:
        save_plan(plan, staging)
    else:
        update_plan_meta(staging, plan.meta)
    sweep_unplanned(staging, plan)
    return Prepared(name, staging, final, plan.key, len(plan.items), plan.n_shards, published=False)


def _stage_published_renders(final: Path, staging: Path, plan: SweepPlan) -> None:
    """Stage a published set's images and manifest parts (same plan, so the same pixels) for an
    `--overwrite` that changes only how renders are judged: its shards are then re-scored, not
    re-rendered. Images are hard links where the file system allows (atomic writes replace, never
    edit, a file, so the published copy cannot change through them); a part or image that differs
    from its record is caught by the shard checks and rendered again."""
    if staging.exists() and plan_key_of(staging) == plan.key:
        return  # a staged run of this plan is already there: it resumes as it is
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    for index in range(plan.n_shards):
        part = shard_path(final, index, plan.n_shards)
        if part.is_file():
            place_file(part, shard_path(staging, index, plan.n_shards))
    for it in plan.items:
        if (final / it.file_name).is_file():
            place_file(final / it.file_name, staging / it.file_name)
    save_plan(plan, staging)  # last: a seed cut short has no plan.json and is discarded by the next --overwrite


def published_damage(final: Path) -> str | None:
    """What is wrong with a published dataset (the first of its audit problems, in one line), or None when sound."""
    result = audit_dataset(final)
    if result.ok:
        return None
    first = result.problems[0]
    return f"{len(result.problems)} problem(s), first {first.code}: {first.message}"


def sweep_unplanned(staging: Path, plan: SweepPlan) -> list[str]:
    """Remove what a killed run left in staging: unfinished atomic writes and images the plan does not name."""
    planned = {it.file_name for it in plan.items}
    gone = [
        rel
        for rel in unaccounted_files(staging, planned)
        if Path(rel).name.startswith(TEMP_PREFIX) or (rel.startswith("images/") and rel not in planned)
    ]
    for rel in gone:
        (staging / rel).unlink(missing_ok=True)
    return gone


def _judged_alike(final: Path, cfg: Config) -> bool:
    """The published dataset was judged with the thresholds asked for now (else it must be redone)."""
    # The card's calibration record and its sample size say how thresholds were found, not what they
    # are: a dataset published before they existed is still judged alike.
    record = ("calibration", "calibration_max_images")
    try:
        theirs = read_dataset_meta(final).get("thresholds") or {}
    except ValueError:
        return False
    mine = config_to_dict(cfg.quality)
    return {k: v for k, v in theirs.items() if k not in record} == {k: v for k, v in mine.items() if k not in record}


def pending_shards(staging: Path, plan: SweepPlan | None = None) -> list[int]:
    plan = plan or load_plan(staging)
    return [i for i in range(plan.n_shards) if why_render(staging, plan, i) is not None]

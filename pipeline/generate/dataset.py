"""Generate a dataset end to end: plan -> shards -> FID/KID + gates -> card/report -> publish or reject.

Folders (OUT is what the user passes as --out):

    OUT/.staging/<name>/   where a dataset is rendered, resumed and judged; a rejected one stays here,
                           with its quality report and a REJECTED file naming the failed gates
    OUT/<name>/            a published dataset: moved here in one os.replace once every gate passed

Publishing never shows a half dataset: the folder appears under its final name complete, with
`_SUCCESS`, and holding nothing the manifest does not account for. A folder under the final name that
holds another dataset is refused unless `overwrite`, and even then it is only replaced after the new
dataset has passed its gates, through a journal that lets the next run finish or undo a replacement
a crash interrupted (`recover_publish`).

One run at a time writes a dataset: `prepare` takes its lock (OUT/.staging/.<name>.lock, see
pipeline.locks) and a second run of the same dataset refuses at once, naming the first.

The steps are plain functions (`prepare`, `render_shard`, `finish`, `publish`) so that the Prefect
flow (flows/generate.py) maps the same code over shards; `generate_dataset` runs them in-process.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

from manifests.audit import audit_dataset, unaccounted_files
from manifests.card import CARD_MD, package_versions
from manifests.labels import dataset_kind, read_labels
from manifests.layout import GRID_FILE, REJECTED_MARKER, REPORT_DIR, SUCCESS_MARKER, TEMP_PREFIX, shard_path
from manifests.writer import finalize, read_shards_table
from pipeline.cache import read_rgb_batch
from pipeline.calibration import apply_calibration
from pipeline.config import Config, config_to_dict, load_config, to_overrides
from pipeline.core.device import resolve_device
from pipeline.core.legacy import checkpoint_config, stored_config
from pipeline.expressions import EXPRESSIONS
from pipeline.generate.plan import (
    NOVEL_SOURCE,
    PlanError,
    PlannedIdentity,
    SweepPlan,
    base_image_paths,
    build_plan,
    identity_photos,
    load_plan,
    make_render_key,
    novel_identity_codes,
    plan_key_of,
    read_identity_file,
    real_identity_codes,
    save_plan,
    update_plan_meta,
)
from pipeline.generate.shards import render_shard, why_render
from pipeline.io_utils import atomic_write_json
from pipeline.locks import WriterLock
from pipeline.preflight import readable_file, writable_folder
from pipeline.quality.facenet import resolve_identity_backend
from pipeline.quality.fid import require_fid_extractor
from pipeline.quality.gates import GateReport, evaluate_gates, gate_inputs_from_manifest
from pipeline.swaps import draws_over_photo
from pipeline.train.grids import compose_grid, save_png

STAGING_DIR = ".staging"
log = logging.getLogger(__name__)

ProgressFn = Callable[[str, int, int, dict[str, float]], None]


class GenerateError(RuntimeError):
    """Generation could not run to a verdict (the message says what to fix)."""


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


@dataclass
class GenerateResult:
    status: str  # published | rejected
    name: str
    dataset_dir: Path  # the published folder, or the staging folder of a rejected dataset
    staging_dir: Path
    run_id: str
    plan_key: str
    n_images: int
    n_shards: int
    shards_rendered: int = 0
    shards_skipped: int = 0
    gates: list[dict[str, Any]] = field(default_factory=list)
    failed_message: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    report: Path | None = None
    grid: Path | None = None
    card: Path | None = None
    seconds: float = 0.0

    @property
    def published(self) -> bool:
        return self.status == "published"

    def to_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


# --------------------------------------------------------------------------- prepare


def resolve_config(
    cfg: Config | None, checkpoint: Path, overrides: list[str] | None = None
) -> tuple[Config, dict[str, Any]]:
    """The config to generate with and the loaded checkpoint.

    Without `cfg` the checkpoint's own config is used (plus `overrides`): the model and data always
    match then. With `cfg`, its model section must equal the checkpoint's (CheckpointError names the
    fields that differ) and its data must be the data the checkpoint was trained on.
    """
    from pipeline.core.checkpoint import CheckpointError, load_checkpoint

    ckpt = load_checkpoint(Path(checkpoint))
    saved = checkpoint_config(ckpt, str(checkpoint))
    # Fields the user chose: in an override, or written in the config they passed.
    explicit = {
        o.split("=", 1)[0].strip().removeprefix("quality.") for o in overrides or [] if o.strip().startswith("quality.")
    }
    if cfg is not None:
        explicit |= set(cfg.quality.model_fields_set)
    if cfg is None:
        cfg = checkpoint_config(ckpt, str(checkpoint), overrides)
    elif overrides:
        cfg = load_config(None, [*to_overrides(config_to_dict(cfg)), *overrides])
    # Compare through today's Config, so a model field added since the checkpoint was written (with
    # its default) is not a mismatch; rendering rebuilds the networks from the checkpoint's config.
    theirs = config_to_dict(saved.model)
    mine = config_to_dict(cfg.model)
    diffs = [
        f"model.{k}: checkpoint={theirs.get(k)!r} config={mine.get(k)!r}"
        for k in sorted(theirs)
        if theirs.get(k) != mine.get(k)
    ]
    if diffs:
        raise CheckpointError(f"{checkpoint} was trained with another model config: " + "; ".join(diffs))
    apply_calibration(cfg, ckpt, explicit)
    return cfg, ckpt


def _check_data(cfg: Config, ckpt: dict[str, Any]) -> str:
    from pipeline.train.data import dataset_key

    root = Path(cfg.data.root)
    if not (root / "labels.parquet").is_file():
        raise FileNotFoundError(
            f"data.root {root}: no labelled dataset (labels.parquet); generation needs the training data for real "
            "identities, ground truth and FID (make it with `fersynth data make` or `fersynth demo`)"
        )
    key = dataset_key(root)
    if ckpt.get("data_key") and ckpt["data_key"] != key:
        raise ValueError(
            f"data.root {root} is not the data the checkpoint was trained on (content key {key[:12]} != "
            f"{ckpt['data_key'][:12]}); point data.root at the training data"
        )
    return key


def make_plan(cfg: Config, checkpoint: Path, ckpt: dict[str, Any], name: str | None = None) -> SweepPlan:
    """Resolve identities (encoding real ones with the checkpoint's encoder) and expand the sweep."""
    from pipeline.cache import load_tensors
    from pipeline.core.checkpoint import checkpoint_sha256
    from pipeline.core.trained import load_trained

    gen = cfg.generate
    data_key = _check_data(cfg, ckpt)
    res = cfg.model.max_resolution
    sha = checkpoint_sha256(checkpoint)
    labels, _ = read_labels(Path(cfg.data.root))
    split_of = dict(zip(labels["identity"], labels["split"], strict=True))

    wanted: list[str] = []
    if "real" in gen.identity_sources:
        names = sorted(labels.loc[labels["split"] == gen.real_split, "identity"].unique())
        wanted += names[: gen.max_real_identities] if gen.max_real_identities else names
    if "file" in gen.identity_sources:
        if gen.identity_file is None:
            raise PlanError("generate.identity_sources has 'file' but generate.identity_file is not set")
        listed = read_identity_file(gen.identity_file)
        unknown = [i for i in listed if i not in split_of]
        if unknown:
            raise PlanError(f"{gen.identity_file}: identity id(s) not in {cfg.data.root}: {unknown[:10]}")
        wanted += [i for i in listed if i not in wanted]

    identities: list[PlannedIdentity] = []
    rows: list[np.ndarray] = []
    photos: dict[str, list[str]] = {}
    if wanted:
        device = resolve_device(gen.device, "generate.device")
        _, nets, _ = load_trained(Path(checkpoint), device=device)
        images, frame = load_tensors(Path(cfg.data.root), res, cfg.data.cache_dir)
        sel = np.flatnonzero(frame["identity"].isin(wanted).to_numpy())
        codes = real_identity_codes(
            nets.encoder, images[torch.as_tensor(sel)], frame["identity"].iloc[sel].tolist(), device, gen.batch_size
        )
        # Each render of a real identity starts from one of its photos (generate.source_photos all), or
        # all of them are drawn over one neutral photo of it (first_neutral, when drawn over a photo).
        over_photo = draws_over_photo(gen.composite, nets.generator_ema.has_mask)
        every_photo = gen.source_photos == "all"
        photos = identity_photos(labels, wanted) if every_photo else {}
        bases = base_image_paths(labels, wanted) if over_photo and not every_photo else {}
        for ident in wanted:
            identities.append(
                PlannedIdentity(ident, f"real:{split_of[ident]}", split_of[ident], len(rows), bases.get(ident))
            )
            rows.append(codes[ident])
    if "novel" in gen.identity_sources:
        if gen.n_novel == 0:
            raise PlanError("generate.identity_sources has 'novel' but generate.n_novel is 0")
        for ident, code in novel_identity_codes(ckpt["codes"], gen.n_novel, gen.seed).items():
            identities.append(PlannedIdentity(ident, NOVEL_SOURCE, None, len(rows)))
            rows.append(code)
    codes_arr = np.stack(rows).astype(np.float32) if rows else np.zeros((0, cfg.model.id_dim), np.float32)
    render_key = make_render_key(gen, sha, data_key, res)
    meta = {
        "name": name,
        "checkpoint": {"path": str(Path(checkpoint).resolve()), "sha256": sha, "step": int(ckpt["global_step"])},
        "data": {"root": str(Path(cfg.data.root).resolve()), "key": data_key},
        "config": config_to_dict(cfg),
    }
    return build_plan(gen, identities, codes_arr, render_key, meta, photos)


def dataset_lock(out: Path, name: str) -> WriterLock:
    """The (not yet acquired) one-writer lock of dataset `name` under `out`: beside its staging folder, never in it."""
    return WriterLock(Path(out) / STAGING_DIR / name, f"generation of dataset {name!r}")


def prepare(
    cfg: Config | None,
    checkpoint: Path,
    out: Path,
    *,
    name: str | None = None,
    overwrite: bool = False,
    overrides: list[str] | None = None,
) -> Prepared:
    """Plan the sweep and set up (or resume) its staging folder; never touches a published dataset.

    Returns holding the dataset's one-writer lock (taken before planning when the name is known,
    right after it otherwise); the caller gives it back with `Prepared.release()` once published.
    """
    checkpoint, out = Path(checkpoint), Path(out)
    preflight_generate(checkpoint, out)
    cfg, ckpt = resolve_config(cfg, checkpoint, overrides)
    require_fid_extractor(cfg.quality.fid_weights, cfg.quality.fid_torch_fidelity_weights)  # before any rendering
    name = name or cfg.generate.name
    lock = dataset_lock(out, check_dataset_name(name)).acquire() if name else None
    try:
        plan = make_plan(cfg, checkpoint, ckpt)
        name = check_dataset_name(name or f"fersynth-{plan.key[:10]}")
        lock = lock or dataset_lock(out, name).acquire()
        prep = _stage(cfg, plan, out, name, overwrite)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    prep.lock = lock
    return prep


def check_dataset_name(name: str) -> str:
    if "/" in name or name.startswith((".", "_")) or not name.strip():
        raise ValueError(f"dataset name {name!r} must be a plain folder name (no '/', not hidden)")
    return name


def preflight_generate(checkpoint: Path, out: Path) -> None:
    """The checkpoint can be read and OUT written: checked before the checkpoint is even loaded."""
    readable_file(checkpoint, "--checkpoint")
    writable_folder(out, "--out")


def _stage(cfg: Config, plan: SweepPlan, out: Path, name: str, overwrite: bool) -> Prepared:
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
            _link_or_copy(part, shard_path(staging, index, plan.n_shards))
    for it in plan.items:
        if (final / it.file_name).is_file():
            _link_or_copy(final / it.file_name, staging / it.file_name)
    save_plan(plan, staging)  # last: a seed cut short has no plan.json and is discarded by the next --overwrite


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:  # another file system, or one without hard links
        shutil.copy2(src, dst)


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
    from manifests.reader import read_dataset_meta

    # The calibration record and its sample size say how thresholds were found, not what they are:
    # a dataset published before they existed is still judged alike.
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


# --------------------------------------------------------------------------- finish


def _subset(n: int, cap: int, seed: int) -> np.ndarray:
    if n <= cap:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).permutation(n)[:cap])


def fid_metrics(cfg: Config, root: Path, df: pd.DataFrame) -> tuple[dict[str, Any], pd.DataFrame | None]:
    """FID/KID of renders vs held-out real images, overall and per expression (capped, seeded subsets).

    A failure here (no weights, too few images) is recorded as NaN metrics with a note: the KID gate
    then fails visibly instead of the whole run dying after the rendering is done.
    """
    from pipeline.cache import load_tensors
    from pipeline.quality.fid import (
        extract_features,
        fid_kid_from_features,
        load_fid_extractor,
        per_group_fid_kid,
    )

    gen, q = cfg.generate, cfg.quality
    try:
        images, frame = load_tensors(Path(cfg.data.root), cfg.model.max_resolution, cfg.data.cache_dir)
        real_rows = np.flatnonzero((frame["split"] == gen.fid_split).to_numpy())
        real_rows = real_rows[_subset(len(real_rows), gen.fid_max_images, gen.seed)]
        real = images[torch.as_tensor(real_rows)]
        real_labels = frame["expression"].iloc[real_rows].to_numpy()
        fake_df = df.sort_values("sample_id").reset_index(drop=True)
        fake_df = fake_df.iloc[_subset(len(fake_df), gen.fid_max_images, gen.seed + 1)]
        if len(real) < 2 or len(fake_df) < 2:
            raise ValueError(
                f"FID/KID need >= 2 images per set, got {len(real)} real ({gen.fid_split}) and {len(fake_df)} renders"
            )
        fake = read_rgb_batch(root, fake_df["file_name"].tolist())
        dev = resolve_device(q.device, "quality.device")
        extractor = load_fid_extractor(q.fid_weights, q.fid_torch_fidelity_weights, dev)
        fr = extract_features(extractor, real, q.batch_size, dev)
        ff = extract_features(extractor, fake, q.batch_size, dev)
        m = fid_kid_from_features(fr, ff, q.kid_subset_size, q.kid_subsets, q.min_fid_images, seed=gen.seed, warn=False)
        per = per_group_fid_kid(
            fr, real_labels, ff, fake_df["expression"].to_numpy(), q.kid_subset_size, q.kid_subsets, q.min_fid_images
        )
        per["kid_threshold"] = kid_class_thresholds(fr, real_labels, per, q.kid_ceiling, gen.seed)
        m["fid_split"] = gen.fid_split
        m["fid_per_expression"] = json.loads(per.to_json(orient="records"))
        return m, per
    except Exception as exc:  # reported through the gates, see docstring
        return {
            "fid": math.nan,
            "kid_mean": math.nan,
            "n_real": 0,
            "n_fake": 0,
            "fid_error": f"{type(exc).__name__}: {exc}",
        }, None


def kid_class_thresholds(
    real_features: torch.Tensor, real_labels: np.ndarray, per: pd.DataFrame, ceiling: float, seed: int
) -> list[float]:
    """Each expression's KID ceiling: the set's, plus what two real samples of its render count show."""
    from pipeline.calibration import real_vs_real_kid

    return [
        ceiling
        + real_vs_real_kid(real_features[torch.from_numpy(real_labels == row.label)], int(row.n_fake), seed=seed)
        for row in per.itertuples()
    ]


def usefulness_metrics(cfg: Config, staging: Path, df: pd.DataFrame, data_key: str) -> dict[str, Any]:
    """The usefulness gate's figures (cached in staging per passing set), or why it was not computed."""
    from pipeline.quality import usefulness as U

    s = U.UsefulnessSettings.from_quality(cfg.quality, cfg.generate.seed)
    key = U.cache_key(df, data_key, s)
    try:
        result = U.cached_usefulness(staging, key)
        if result is None:
            result = U.measure_usefulness(
                staging, df, Path(cfg.data.root), cfg.model.max_resolution, s, cfg.data.cache_dir
            )
            U.store_usefulness(staging, key, result)
    except (U.UsefulnessNotComputed, OSError) as exc:
        return {"usefulness_ratio": math.nan, "usefulness_error": str(exc)}
    return result.metrics()


def sample_grid(root: Path, df: pd.DataFrame, plan: SweepPlan, n_ids: int, path: Path) -> Path:
    """Identities x expressions (highest intensity, repeat 0) from the rendered files."""
    exprs = [e for e in EXPRESSIONS if e in set(df["expression"])]
    top = df.groupby("expression")["intensity"].max().to_dict()
    ids = list(dict.fromkeys(i.identity_id for i in plan.identities))[:n_ids]
    blank = None
    rows = []
    for ident in ids:
        row = []
        for e in exprs:
            hit = df[(df["identity_id"] == ident) & (df["expression"] == e) & np.isclose(df["intensity"], top[e])]
            hit = hit.sort_values("sample_id")
            if len(hit):
                row.append(np.asarray(Image.open(root / hit.iloc[0]["file_name"]).convert("RGB")))
            else:
                if blank is None:
                    w = int(df["width"].iloc[0])
                    blank = np.full((w, w, 3), 255, np.uint8)
                row.append(blank)
        rows.append(row)
    return save_png(compose_grid(rows, exprs, ids), path)


def finish(
    cfg_or_none: Config | None, staging: Path, run_id: str, progress: ProgressFn | None = None
) -> dict[str, Any]:
    """Dataset-level step: FID/KID, gates, quality report, sample grid, then the status files and finalize.

    Returns a small JSON-safe dict (passed, failed_message, gates, metrics, paths).
    """
    from pipeline.quality.report import write_quality_report

    staging = Path(staging)
    plan = load_plan(staging)
    cfg = cfg_or_none or stored_config(plan.meta["config"], str(staging / "plan.json"))
    missing = pending_shards(staging, plan)
    if missing:
        raise GenerateError(
            f"{staging}: shard(s) {missing[:20]} of {plan.n_shards} are not complete; rerun to render them"
        )
    df = read_shards_table(staging).to_pandas()
    if progress:
        progress("fid", 0, 1, {})
    metrics, per_expr = fid_metrics(cfg, staging, df)
    if progress:
        progress("fid", 1, 1, {k: float(metrics[k]) for k in ("fid", "kid_mean") if k in metrics})
    if cfg.quality.usefulness:
        if progress:
            progress("usefulness", 0, 1, {})
        metrics.update(usefulness_metrics(cfg, staging, df, plan.meta["data"]["key"]))
        if progress:
            progress("usefulness", 1, 1, {"ratio": float(metrics["usefulness_ratio"])})
    per_image = gate_inputs_from_manifest(df)
    report = evaluate_gates(per_image, metrics, cfg.quality)
    status = "published" if report.passed else "rejected"
    gates = report.to_dict()["gates"]
    meta = _dataset_meta(cfg, plan, len(df), run_id, status, gates, metrics)
    kind = dataset_kind(read_labels(Path(cfg.data.root))[0])
    ident_thr = cfg.quality.identity_threshold_for(resolve_identity_backend(cfg.quality.identity_backend, kind))
    sub = _subset(len(df), cfg.generate.report_max_images, cfg.generate.seed + 2)
    paths = write_quality_report(
        staging,
        report,
        per_image.iloc[sub].reset_index(drop=True),
        per_expression=per_expr,
        images=read_rgb_batch(staging, df["file_name"].iloc[sub].tolist()),
        cfg=cfg.quality,
        identity_threshold=ident_thr,
        title=f"Quality report: {plan.meta.get('name')}",
        folder_name=REPORT_DIR,
        usefulness=metrics,
    )
    grid = sample_grid(staging, df, plan, cfg.generate.grid_identities, staging / REPORT_DIR / GRID_FILE)
    verdict = {
        "passed": report.passed,
        "status": status,
        "failed_message": report.failed_message(),
        "gates": gates,
        "metrics": _json_safe(metrics),
        "report": str(paths["report"]),
        "grid": str(grid),
        "n_images": len(df),
    }
    # The report is written before finalize, so _SUCCESS records its hashes too.
    write_status(staging, verdict, lambda: finalize(staging, meta, n_shards=plan.n_shards))
    return verdict


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


def _dataset_meta(
    cfg: Config, plan: SweepPlan, n_images: int, run_id: str, status: str, gates: list, metrics: dict[str, Any]
) -> dict[str, Any]:
    """The dataset-level metadata a finalized dataset carries (card, _common_metadata)."""
    description = f"{n_images} synthetic facial-expression renders of {len(plan.identities)} identities"
    n_based = sum(p.base_image is not None for p in plan.identities)
    how = (
        "redrawn where the render for the target expression differs from the render for the photo's own"
        if cfg.generate.composite == "difference"
        else "through the generator's edit mask"
    )
    photos = {it.source_image for it in plan.items if it.source_image}
    if photos:
        over = draws_over_photo(cfg.generate.composite, cfg.model.edit_mask)
        description += (
            f"; each render of {len({it.identity_id for it in plan.items if it.source_image})} real identities "
            f"starts from one of their photos ({len(photos)} photos in all, every session, pose, light and "
            f"expression; manifest column source_image): that photo's own codes"
            + (f", drawn over it ({how})" if over else "")
        )
    elif n_based:
        description += (
            f"; the renders of {n_based} real identities are drawn over one photo of each ({how}; "
            "plan.json: identities[].base_image)"
        )
    meta = {
        "name": plan.meta.get("name"),
        "description": description,
        "status": status,
        "run_id": run_id,
        "gates": gates,
        "metrics": _json_safe(metrics),
        "thresholds": config_to_dict(cfg.quality),
        "checkpoint": plan.meta["checkpoint"],
        "training_data": {"root": plan.meta["data"]["root"], "data_key": plan.meta["data"]["key"]},
        "splits": {"identities_from": cfg.generate.real_split, "fid_reference": cfg.generate.fid_split},
        "config": config_to_dict(cfg),
        "plan": {"key": plan.key, "render_key": plan.render_key, "n_items": len(plan.items), "n_shards": plan.n_shards},
        "code_version": package_versions(("fersynth",)).get("fersynth"),
        "packages": package_versions(),
    }
    return meta


def _json_safe(x: Any) -> Any:
    """NaN/inf -> None, numpy scalars -> Python: card JSON must be strict JSON."""
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_json_safe(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


# --------------------------------------------------------------------------- publish


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


# --------------------------------------------------------------------------- all in one


def generate_dataset(
    cfg: Config | None,
    checkpoint: Path | str,
    out: Path | str,
    *,
    name: str | None = None,
    overwrite: bool = False,
    overrides: list[str] | None = None,
    run_id: str | None = None,
    progress: ProgressFn | None = None,
) -> GenerateResult:
    """Render, check, gate and publish (or reject) a dataset in this process; no Prefect needed.

    `cfg=None` takes the checkpoint's config (with `overrides`). Rerunning after an interruption
    resumes: finished shards are kept, missing or damaged ones re-rendered.
    """
    t0 = time.perf_counter()
    run_id = run_id or uuid.uuid4().hex[:16]
    if progress:
        progress("plan", 0, 1, {})
    prep = prepare(cfg, Path(checkpoint), Path(out), name=name, overwrite=overwrite, overrides=overrides)
    if progress:
        progress("plan", 1, 1, {})
    try:
        return _render_judge_publish(prep, run_id, overwrite, progress, t0)
    finally:
        prep.release()


def _render_judge_publish(
    prep: Prepared, run_id: str, overwrite: bool, progress: ProgressFn | None, t0: float
) -> GenerateResult:
    if prep.published:
        return _result_from_published(prep, run_id, time.perf_counter() - t0)
    plan = load_plan(prep.staging)
    done = [0]
    total = len(plan.items)

    def tick(n: int) -> None:
        done[0] += n
        if progress:
            progress("render", done[0], total, {})

    rendered = skipped = 0
    for i in range(plan.n_shards):
        r = render_shard(prep.staging, i, run_id, plan=plan, progress=tick)
        rendered += r["status"] == "rendered"
        skipped += r["status"] in ("skipped", "rescored")  # rescored: judged again, nothing re-rendered
    verdict = finish(None, prep.staging, run_id, progress)
    where = publish(prep.staging, prep.final, verdict, overwrite)
    return GenerateResult(
        status=verdict["status"],
        name=prep.name,
        dataset_dir=where,
        staging_dir=prep.staging,
        run_id=run_id,
        plan_key=prep.plan_key,
        n_images=verdict["n_images"],
        n_shards=plan.n_shards,
        shards_rendered=rendered,
        shards_skipped=skipped,
        gates=verdict["gates"],
        failed_message=verdict["failed_message"],
        metrics=verdict["metrics"],
        report=where / REPORT_DIR / "report.md",
        grid=where / REPORT_DIR / GRID_FILE,
        card=where / CARD_MD,
        seconds=time.perf_counter() - t0,
    )


def _result_from_published(prep: Prepared, run_id: str, seconds: float) -> GenerateResult:
    card = json.loads((prep.final / "dataset_card.json").read_text(encoding="utf-8"))
    failed = GateReport()  # published datasets passed every enforced gate
    return GenerateResult(
        status="published",
        name=prep.name,
        dataset_dir=prep.final,
        staging_dir=prep.staging,
        run_id=run_id,
        plan_key=prep.plan_key,
        n_images=prep.n_items,
        n_shards=prep.n_shards,
        shards_skipped=prep.n_shards,
        gates=card.get("gates", []),
        failed_message=failed.failed_message(),
        metrics=card.get("metrics", {}),
        report=prep.final / REPORT_DIR / "report.md",
        grid=prep.final / REPORT_DIR / GRID_FILE,
        card=prep.final / CARD_MD,
        seconds=seconds,
    )

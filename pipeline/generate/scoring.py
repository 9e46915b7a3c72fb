"""Judge a rendered set: FID/KID and usefulness, the gates, quality report and sample grid, then finalize (`finish`)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

from manifests.card import package_versions
from manifests.labels import dataset_kind, read_labels
from manifests.layout import GRID_FILE, REPORT_DIR
from manifests.writer import finalize, read_shards_table
from pipeline.cache import load_tensors, read_rgb_batch
from pipeline.calibration import real_vs_real_kid
from pipeline.config import Config, config_to_dict
from pipeline.core.device import resolve_device
from pipeline.core.legacy import stored_config
from pipeline.expressions import EXPRESSIONS
from pipeline.generate.plan import SweepPlan, load_plan
from pipeline.generate.publishing import GenerateError, write_status
from pipeline.generate.staging import pending_shards
from pipeline.quality.facenet import resolve_identity_backend
from pipeline.quality.fid import extract_features, fid_kid_from_features, load_fid_extractor, per_group_fid_kid
from pipeline.quality.gates import evaluate_gates, gate_inputs_from_manifest
from pipeline.swaps import draws_over_photo
from pipeline.train.grids import compose_grid, save_png

ProgressFn = Callable[[str, int, int, dict[str, float]], None]


def _subset(n: int, cap: int, seed: int) -> np.ndarray:
    if n <= cap:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).permutation(n)[:cap])


def fid_metrics(cfg: Config, root: Path, df: pd.DataFrame) -> tuple[dict[str, Any], pd.DataFrame | None]:
    """FID/KID of renders vs held-out real images, overall and per expression (capped, seeded subsets).

    A failure here (no weights, too few images) is recorded as NaN metrics with a note: the KID gate
    then fails visibly instead of the whole run dying after the rendering is done.
    """
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
    return [
        ceiling
        + real_vs_real_kid(real_features[torch.from_numpy(real_labels == row.label)], int(row.n_fake), seed=seed)
        for row in per.itertuples()
    ]


def usefulness_metrics(cfg: Config, staging: Path, df: pd.DataFrame, data_key: str) -> dict[str, Any]:
    """The usefulness gate's figures (cached in staging per passing set), or why it was not computed."""
    from pipeline.quality import usefulness as U  # here, not at the top: it loads torchmetrics

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
    from pipeline.quality.report import write_quality_report  # here, not at the top: it loads matplotlib

    staging = Path(staging)
    plan = load_plan(staging)
    cfg = cfg_or_none or stored_config(plan.meta["config"], str(staging / "plan.json"))
    missing = pending_shards(staging, plan)
    if missing:
        raise GenerateError(
            f"{staging}: shard(s) {missing[:20]} of {plan.n_shards} are not complete; rerun to render them"
        )
    df = read_shards_table(staging).to_pandas()
    metrics, per_expr = _set_metrics(cfg, staging, df, plan, progress)
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


def _set_metrics(
    cfg: Config, staging: Path, df: pd.DataFrame, plan: SweepPlan, progress: ProgressFn | None
) -> tuple[dict[str, Any], pd.DataFrame | None]:
    """The set-level figures the gates read: FID/KID (overall and per expression), then usefulness if asked."""
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
    return metrics, per_expr


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
        # How each threshold was found beside its value: a plan from before that lived in the config.
        "thresholds": {
            **config_to_dict(cfg.quality),
            "calibration": plan.meta.get("calibration", plan.meta["config"]["quality"].get("calibration", {})),
        },
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

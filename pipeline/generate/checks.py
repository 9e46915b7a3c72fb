"""Per-image checks of rendered items (expression, identity, SSIM to the procedural truth), and when a
stored shard's checks are out of date (`why_render`)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch

from manifests.schema import parse_dataset_metadata
from manifests.writer import shard_path, shard_problem
from pipeline.core.data import session_of
from pipeline.generate.context import RenderContext
from pipeline.generate.plan import PlanItem, SweepPlan
from pipeline.procedural.render import render_truth
from pipeline.quality.expression import expression_scores
from pipeline.quality.gates import per_image_flags
from pipeline.quality.ssim import ssim_batch
from pipeline.train.grids import to_uint8


def _prototype(ctx: RenderContext, plan: SweepPlan, identity_id: str, source: str, code_row: int) -> torch.Tensor:
    """Unit embedding of an identity: mean over its real images, or its clean neutral render (novel)."""
    with ctx.lock:
        if identity_id in ctx.prototypes:
            return ctx.prototypes[identity_id]
    if source.startswith("real"):
        rows = np.flatnonzero((ctx.labels["identity"] == identity_id).to_numpy())
        imgs: torch.Tensor | np.ndarray = ctx.images[torch.as_tensor(rows)]
    else:
        with torch.no_grad():
            w_id = torch.from_numpy(plan.codes[[code_row]]).to(ctx.device)
            w_exp = ctx.codes["exp_neutral"][None]
            imgs = to_uint8(ctx.generator(w_id, w_exp, ctx.resolution, 1.0).clamp(-1, 1)).transpose(0, 3, 1, 2)
    emb, found = ctx.scorer.embed(imgs)
    proto = (
        torch.nn.functional.normalize(emb[found].mean(0), dim=0)
        if found.any()
        else torch.full((emb.shape[1],), float("nan"))
    )
    with ctx.lock:
        ctx.prototypes[identity_id] = proto
    return proto


def _truth(ctx: RenderContext, it: PlanItem) -> np.ndarray | None:
    """Exact true image for a procedural real identity: its factors, the nuisance of its source photo's
    session (session 0 when the plan names no source photo per item)."""
    if not ctx.procedural or not it.identity_source.startswith("real"):
        return None
    session = session_of(ctx.labels["nuisance"].iat[ctx.source_rows[it.source_image]]) if it.source_image else 0
    key = (it.identity_id, it.expression, it.intensity, session)
    with ctx.lock:
        if key in ctx.truths:
            return ctx.truths[key]
    rows = ctx.labels[ctx.labels["identity"] == it.identity_id]
    s0 = rows[rows["nuisance"].map(session_of) == session]
    # The session-0 row of this very expression and intensity carries its own sensor-noise seed:
    # use it when the data has one (then the truth is that image, bit for bit).
    same = s0[(s0["expression"] == it.expression) & (np.isclose(s0["intensity"].astype(float), it.intensity))]
    src = same.iloc[0] if len(same) else (s0.iloc[0] if len(s0) else None)
    truth = (
        None
        if src is None
        else render_truth(src["identity_factors"], it.expression, it.intensity, src["nuisance"], ctx.resolution)
    )
    with ctx.lock:
        ctx.truths[key] = truth
    return truth


def check_batch(ctx: RenderContext, plan: SweepPlan, items: list[PlanItem], imgs: np.ndarray) -> pd.DataFrame:
    """Per-image scores and flags of one rendered batch (uint8 NHWC), one row per item."""
    q = ctx.cfg.quality
    nchw = torch.from_numpy(np.ascontiguousarray(imgs.transpose(0, 3, 1, 2)))
    target = [it.expression_index for it in items]
    pred, p_target, _ = expression_scores(
        ctx.classifier, nchw, target, q.expression_threshold, batch_size=len(items), device=ctx.device
    )
    emb, found = ctx.scorer.embed(nchw)
    protos = torch.stack([_prototype(ctx, plan, it.identity_id, it.identity_source, it.code_row) for it in items])
    cos = (torch.nn.functional.normalize(emb.float(), dim=1) * protos).sum(1).numpy()
    ssim = np.full(len(items), np.nan)
    truths = [_truth(ctx, it) for it in items]
    have = [i for i, t in enumerate(truths) if t is not None]
    if have:
        ssim[have] = ssim_batch(imgs[have], np.stack([truths[i] for i in have]), data_range=255)
    df = pd.DataFrame(
        {
            "identity_cosine": cos,
            "face_found": found.numpy(),
            "expression_p_target": p_target,
            "expression_pred": pred,
            "expression_idx": target,
            "expression": [it.expression for it in items],
            "ssim": ssim,
        }
    )
    flags = per_image_flags(df, q, identity_backend="embedder" if ctx.scorer.name == "embedder" else "facenet")
    df["identity_pass"] = flags["identity_pass"].to_numpy()
    df["expression_pass"] = flags["expression_pass"].to_numpy()
    df["all_pass"] = flags["all_pass"].to_numpy()
    return df


# Settings the per-image flags of a shard depend on: a part made under other ones is re-done.
CHECK_SETTINGS = (
    "identity_backend",
    "identity_threshold",
    "embedder_identity_threshold",
    "face_detection",
    "expression_threshold",
    "expression_thresholds",
    "ssim_floor",
    "facenet_weights",
)


def checks_key(plan: SweepPlan) -> str:
    q = plan.meta["config"]["quality"]
    return hashlib.sha256(json.dumps({k: q.get(k) for k in CHECK_SETTINGS}, sort_keys=True).encode()).hexdigest()[:16]


def _part_checks_key(path: Path) -> str | None:
    try:
        return parse_dataset_metadata(pq.read_schema(path), str(path)).get("checks_key")
    except Exception:  # unreadable parts are caught by shard_problem already
        return None


RESCORE = "per-image check settings changed since the shard was written"


def why_render(root: Path, plan: SweepPlan, index: int) -> str | None:
    """Why shard `index` must be (re-)rendered or re-scored (RESCORE), or None when its part is complete and current."""
    problem = shard_problem(root, index, plan.n_shards, plan.shard_ids(index))
    if problem is None and _part_checks_key(shard_path(root, index, plan.n_shards)) != checks_key(plan):
        problem = RESCORE  # same images, other per-image settings: only the flags must be recomputed
    return problem

"""Render one shard of a sweep plan: PNGs, hashes, per-image checks, one Parquet manifest part.

A shard is the unit of work, of failure and of resume. Its images are written first (each one
atomically), then its manifest part, atomically, through `manifests.writer.write_shard`: the part is
the commit record of the shard. A shard that dies (a crash, a kill, a full disk) leaves no part, and
the next run renders it again; one whose part is whole and holds exactly the planned ids is skipped.

Every sample is rendered from its own codes and seeds (see `pipeline.generate.plan`), never from a
shared random stream, so what an image looks like does not depend on which other samples share
its batch, which shard ran first, or whether the run was interrupted.
"""

from __future__ import annotations

import errno
import io
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch
from PIL import Image

from manifests.writer import shard_path, write_shard
from pipeline.expressions import EXPRESSIONS
from pipeline.generate.checks import RESCORE, check_batch, checks_key, why_render
from pipeline.generate.context import RenderContext, get_context
from pipeline.generate.plan import PlanItem, SweepPlan, load_plan
from pipeline.generate.rendering import render_items
from pipeline.io_utils import atomic_write_bytes, sha256_bytes
from pipeline.procedural.dataset import encode_png

Progress = Callable[[int], None]  # called with the number of images just finished


class ShardError(RuntimeError):
    """A shard that could not be rendered; the message names the shard and the cause."""


def write_png(path: Path, data: bytes) -> None:
    """Atomic PNG write (a seam for tests that simulate a full disk)."""
    atomic_write_bytes(path, data)


def stored_renders(root: Path, part: Path, items: list[PlanItem]) -> tuple[np.ndarray, list[str]] | None:
    """The shard's PNGs as uint8 NHWC in `items` order and their sha256, or None when any file differs from its row."""
    table = pq.read_table(part, columns=["sample_id", "sha256"]).to_pydict()
    recorded = dict(zip(table["sample_id"], table["sha256"], strict=True))
    images, hashes = [], []
    for it in items:
        data = (root / it.file_name).read_bytes()
        if sha256_bytes(data) != recorded.get(it.sample_id):
            return None  # changed since it was rendered: render it again instead
        with Image.open(io.BytesIO(data)) as im:
            images.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
        hashes.append(recorded[it.sample_id])
    return np.stack(images), hashes


def _rescore_rows(
    root: Path,
    plan: SweepPlan,
    index: int,
    items: list[PlanItem],
    run_id: str,
    progress: Progress | None,
    device: torch.device | None,
) -> pd.DataFrame | None:
    """The shard's rows with fresh per-image checks of its stored PNGs (lossless, so the same pixels); None if any changed."""
    stored = stored_renders(root, shard_path(root, index, plan.n_shards), items)
    if stored is None:
        return None
    imgs, hashes = stored
    ctx = get_context(plan, device)
    bs = ctx.cfg.generate.batch_size
    frames = []
    for start in range(0, len(items), bs):
        batch = items[start : start + bs]
        checks = check_batch(ctx, plan, batch, imgs[start : start + bs])
        frames.append(_manifest_rows(ctx, batch, hashes[start : start + bs], checks, index, run_id))
        if progress:
            progress(len(batch))
    return pd.concat(frames, ignore_index=True)


def shard_meta(plan: SweepPlan, run_id: str) -> dict[str, Any]:
    """Dataset JSON known at render time (the final one, with gates, is written by finalize)."""
    return {
        "name": plan.meta.get("name"),
        "status": "rendering",
        "run_id": run_id,
        "plan_key": plan.key,
        "checks_key": checks_key(plan),
        "checkpoint": {
            "sha256": plan.render_key["checkpoint_sha256"],
            "step": plan.meta["checkpoint"]["step"],
            "path": plan.meta["checkpoint"]["path"],
        },
    }


def render_shard(
    root: Path,
    index: int,
    run_id: str,
    plan: SweepPlan | None = None,
    progress: Progress | None = None,
    device: torch.device | None = None,
) -> dict[str, Any]:
    """Render shard `index` of the plan saved in `root` unless it is already complete.

    Returns a small summary ({shard, status: skipped|rendered, n, reason}). A corrupt or foreign part
    is removed and re-rendered. Any failure raises ShardError and leaves no part file for the shard.
    """
    root = Path(root)
    plan = plan or load_plan(root)
    items = plan.shard(index)
    problem = why_render(root, plan, index)
    if problem is None:
        if progress:
            progress(len(items))
        return {"shard": index, "status": "skipped", "n": len(items), "reason": ""}
    part = shard_path(root, index, plan.n_shards)
    if problem == RESCORE:
        rows = _rescore_rows(root, plan, index, items, run_id, progress, device)
        if rows is not None:  # the images stay as they are: only the flags in the part are new
            write_shard(root, index, plan.n_shards, rows, shard_meta(plan, run_id))
            return {"shard": index, "status": "rescored", "n": len(items), "reason": problem}
    # A part that exists but is not complete (truncated, corrupt, another plan's) must go first:
    # readers would otherwise see it while the shard is re-rendered.
    part.unlink(missing_ok=True)
    try:
        rows = _render_rows(root, plan, index, items, run_id, progress, device)
        write_shard(root, index, plan.n_shards, rows, shard_meta(plan, run_id))
    except OSError as exc:
        part.unlink(missing_ok=True)
        why = "disk full" if exc.errno == errno.ENOSPC else f"I/O error ({exc.strerror or exc})"
        raise ShardError(f"shard {index} of {plan.n_shards} in {root}: {why}: {exc}; rerun to complete it") from exc
    return {"shard": index, "status": "rendered", "n": len(items), "reason": problem}


def _render_rows(
    root: Path,
    plan: SweepPlan,
    index: int,
    items: list[PlanItem],
    run_id: str,
    progress: Progress | None,
    device: torch.device | None,
) -> pd.DataFrame:
    ctx = get_context(plan, device)
    bs = ctx.cfg.generate.batch_size
    frames = []
    # PNG encoding, writing and hashing of a batch run in a second thread while the checks of the
    # same batch run in torch (both release the GIL for their heavy parts), so I/O hides behind compute.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="png-writer") as pool:
        for start in range(0, len(items), bs):
            batch = items[start : start + bs]
            imgs = render_items(ctx, plan, batch)
            written = pool.submit(_write_images, root, batch, imgs)
            checks = check_batch(ctx, plan, batch, imgs)
            hashes = written.result()  # re-raises the writer's OSError (e.g. a full disk) here
            frames.append(_manifest_rows(ctx, batch, hashes, checks, index, run_id))
            if progress:
                progress(len(batch))
    return pd.concat(frames, ignore_index=True)


def _source_image(ctx: RenderContext, it: PlanItem) -> str | None:
    """The photo a render starts from (its own, or its identity's one base photo), for the manifest."""
    if it.source_image:
        return it.source_image
    row = ctx.base_rows.get(it.identity_id)
    return None if row is None else str(ctx.labels["path"].iat[row])


def _write_images(root: Path, items: list[PlanItem], imgs: np.ndarray) -> list[str]:
    """Encode, write (atomically) and hash each image; returns the sha256 of each file's bytes."""
    hashes = []
    for it, img in zip(items, imgs, strict=True):
        data = encode_png(img)
        write_png(root / it.file_name, data)
        hashes.append(sha256_bytes(data))
    return hashes


def _manifest_rows(
    ctx: RenderContext, items: list[PlanItem], hashes: list[str], c: pd.DataFrame, shard: int, run_id: str
) -> pd.DataFrame:
    # A non-finite classifier output has pred -1 and p NaN: recorded as the first class with p 0 and a
    # failed check (the columns are non-nullable and p must lie in 0..1).
    pred = [EXPRESSIONS[p] if p >= 0 else EXPRESSIONS[0] for p in c["expression_pred"].astype(int)]
    p_t = np.nan_to_num(c["expression_p_target"].astype(float).to_numpy(), nan=0.0).clip(0.0, 1.0)
    cos = c["identity_cosine"].astype(float)
    # The embedder has no face detector: face_found is "not run" (null) there, as the schema says.
    face = c["face_found"].astype(bool) if ctx.scorer.name != "embedder" else pd.Series([None] * len(items))
    return pd.DataFrame(
        {
            "sample_id": [it.sample_id for it in items],
            "file_name": [it.file_name for it in items],
            "sha256": hashes,
            "width": ctx.resolution,
            "height": ctx.resolution,
            "identity_id": [it.identity_id for it in items],
            "identity_source": [it.identity_source for it in items],
            "source_image": [_source_image(ctx, it) for it in items],
            "expression": [it.expression for it in items],
            "expression_index": [it.expression_index for it in items],
            "intensity": [it.intensity for it in items],
            "nuisance_seed": [it.nuisance_seed for it in items],
            "noise_seed": [it.noise_seed for it in items],
            "checkpoint_sha256": ctx.checkpoint_sha256,
            "checkpoint_step": ctx.checkpoint_step,
            "shard": shard,
            "run_id": run_id,
            "identity_score": cos.where(np.isfinite(cos), None).to_numpy(),
            "identity_pass": c["identity_pass"].astype(bool).to_numpy(),
            "expression_pred": pred,
            "expression_p_target": p_t,
            "expression_pass": c["expression_pass"].astype(bool).to_numpy(),
            "ssim_truth": c["ssim"].astype(float).to_numpy(),
            "face_found": face.to_numpy(),
            "all_pass": c["all_pass"].astype(bool).to_numpy(),
        }
    )

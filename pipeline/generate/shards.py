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
import hashlib
import io
import json
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch
from PIL import Image
from torch import nn

from manifests.labels import dataset_kind
from manifests.schema import parse_dataset_metadata
from manifests.writer import shard_path, shard_problem, write_shard
from pipeline.config import Config
from pipeline.core.codes import expression_target
from pipeline.core.data import session_of, to_model_range
from pipeline.core.device import resolve_device
from pipeline.core.legacy import stored_config
from pipeline.expressions import EXPRESSIONS
from pipeline.generate.plan import PlanItem, SweepPlan, load_plan
from pipeline.io_utils import atomic_write_bytes, sha256_bytes
from pipeline.procedural.dataset import encode_png
from pipeline.procedural.render import render_truth
from pipeline.quality.expression import expression_scores
from pipeline.quality.facenet import IdentityScorer, make_identity_scorer
from pipeline.quality.gates import per_image_flags
from pipeline.quality.ssim import ssim_batch
from pipeline.swaps import draws_over_photo, needs_photo_code, render_from_codes, render_over_photo
from pipeline.train.grids import to_uint8

Progress = Callable[[int], None]  # called with the number of images just finished


class ShardError(RuntimeError):
    """A shard that could not be rendered; the message names the shard and the cause."""


@dataclass
class RenderContext:
    """What rendering and checking a shard needs, loaded once per process and checkpoint."""

    cfg: Config
    plan_key: str
    generator: nn.Module
    classifier: nn.Module
    scorer: IdentityScorer
    identity_threshold: float
    codes: dict[str, torch.Tensor]
    exp_scale: torch.Tensor
    id_scale: torch.Tensor
    device: torch.device
    resolution: int
    labels: pd.DataFrame  # the training data's labels (all splits): prototypes and ground truth
    images: torch.Tensor  # uint8 (N, 3, R, R) in labels row order
    procedural: bool
    checkpoint_sha256: str
    checkpoint_step: int
    # Real identities: identity -> row in `images` of the photo its renders are drawn over, and
    # (generate.composite: difference) that photo's own expression code, encoded once here.
    base_rows: dict[str, int] = field(default_factory=dict)
    base_exp: dict[str, torch.Tensor] = field(default_factory=dict)
    # generate.source_photos all: row in `images` of every item's source photo, and its own (w_id, w_exp).
    over_photo: bool = False
    source_rows: dict[str, int] = field(default_factory=dict)
    source_codes: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    prototypes: dict[str, torch.Tensor] = field(default_factory=dict)
    truths: dict[tuple[str, str, float, int], np.ndarray | None] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


_CONTEXTS: dict[tuple[str, str], RenderContext] = {}
_CONTEXT_LOCK = threading.Lock()


def get_context(plan: SweepPlan, device: torch.device | None = None) -> RenderContext:
    """The (cached) context for a plan: thread tasks in one process share one model copy."""
    cfg = stored_config(plan.meta["config"], f"plan {plan.key}")
    dev = device or resolve_device(cfg.generate.device, "generate.device")
    # The config is part of the key: thresholds and the identity backend live in the context.
    key = (plan.key + json.dumps(plan.meta["config"], sort_keys=True), str(dev))
    with _CONTEXT_LOCK:
        if key not in _CONTEXTS:
            _CONTEXTS.clear()  # one plan at a time per process: do not pile up models
            _CONTEXTS[key] = _load_context(plan, cfg, dev)
        return _CONTEXTS[key]


def _load_context(plan: SweepPlan, cfg: Config, device: torch.device) -> RenderContext:
    from pipeline.cache import load_tensors
    from pipeline.core.checkpoint import CheckpointError, checkpoint_sha256
    from pipeline.core.trained import load_trained
    from pipeline.judges import load_gate_judges

    ckpt_path = Path(plan.meta["checkpoint"]["path"])
    sha = checkpoint_sha256(ckpt_path)
    if sha != plan.render_key["checkpoint_sha256"]:
        raise CheckpointError(
            f"{ckpt_path} changed since the plan was made (sha256 {sha[:12]} != {plan.render_key['checkpoint_sha256'][:12]}); "
            "rerun generation from scratch (overwrite) or restore the checkpoint"
        )
    _, nets, ckpt = load_trained(ckpt_path, device=device)
    # NHWC convolutions render faster on CPU (oneDNN); the batch-independence test holds.
    nets.generator_ema.to(memory_format=torch.channels_last)
    clf, emb = load_gate_judges(cfg, ckpt, device)
    res = cfg.model.max_resolution
    images, labels = load_tensors(Path(cfg.data.root), res, cfg.data.cache_dir)
    procedural = dataset_kind(labels) == "procedural"
    q = cfg.quality
    scorer = make_identity_scorer(
        q.identity_backend,
        "procedural" if procedural else "photo",
        facenet_weights=q.facenet_weights,
        embedder=emb,
        embedder_input_size=res,
        detect=q.face_detection,
        device=device,
        batch_size=cfg.generate.batch_size,
    )
    thr = q.identity_threshold_for(scorer.name)
    codes = {k: v.to(device) for k, v in ckpt["codes"].items()}
    present = (
        codes["exp_present"].bool()
        if "exp_present" in codes
        else torch.ones(codes["exp_centroids"].shape[0], dtype=torch.bool)
    )
    cent = codes["exp_centroids"][present]
    # Jitter scales: the per-dimension spread of the class centroids (expression) and of the fitted
    # identity Gaussian, so a jitter of 0.1 means "a tenth of the natural variation" in either code.
    exp_scale = cent.std(0) if cent.shape[0] > 1 else torch.ones_like(cent[0])
    id_scale = codes["id_chol"].square().sum(1).sqrt()
    row_of_path = {p: i for i, p in enumerate(labels["path"])}
    named = [p.base_image for p in plan.identities if p.base_image]
    named += sorted({it.source_image for it in plan.items if it.source_image})
    missing = [p for p in named if p not in row_of_path]
    if missing:
        raise ValueError(f"{cfg.data.root}: source photo(s) named in the plan are not in the data: {missing[:5]}")
    base_rows = {p.identity_id: row_of_path[p.base_image] for p in plan.identities if p.base_image}
    source_rows = {it.source_image: row_of_path[it.source_image] for it in plan.items if it.source_image}
    base_exp = {}
    if needs_photo_code(cfg.generate.composite):  # one pass per identity's base photo, not per render
        base_codes = _photo_codes(nets.encoder, images, list(base_rows.values()), device, cfg.generate.batch_size)
        base_exp = {ident: base_codes[row][1] for ident, row in base_rows.items()}
    return RenderContext(
        cfg=cfg,
        plan_key=plan.key,
        generator=nets.generator_ema,
        classifier=clf,
        scorer=scorer,
        identity_threshold=thr,
        codes=codes,
        exp_scale=exp_scale,
        id_scale=id_scale,
        device=device,
        resolution=res,
        labels=labels,
        images=images,
        procedural=procedural,
        checkpoint_sha256=sha,
        checkpoint_step=int(ckpt["global_step"]),
        base_rows=base_rows,
        base_exp=base_exp,
        over_photo=draws_over_photo(cfg.generate.composite, nets.generator_ema.has_mask),
        source_rows=source_rows,
        source_codes=_photo_codes(
            nets.encoder, images, sorted(set(source_rows.values())), device, cfg.generate.batch_size
        ),
    )


@torch.no_grad()
def _photo_codes(
    encoder: nn.Module, images: torch.Tensor, rows: list[int], device: torch.device, batch_size: int
) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """image row -> the encoder's (w_id, w_exp) of that photo, in fixed chunks of `rows` in the order given
    (the chunks decide the floats, so callers pass a deterministic order)."""
    out: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        w_id, w_exp = encoder(to_model_range(images[torch.tensor(chunk)], device))
        out.update({r: (a, b) for r, a, b in zip(chunk, w_id, w_exp, strict=True)})
    return out


# --------------------------------------------------------------------------- rendering


def _noise(seed: int, dim: int) -> torch.Tensor:
    return torch.randn(dim, generator=torch.Generator().manual_seed(seed))


def sample_codes(ctx: RenderContext, plan: SweepPlan, items: list[PlanItem]) -> tuple[torch.Tensor, torch.Tensor]:
    """(w_id, w_exp) of each item from the plan's identity codes, the target codes and per-sample seeds."""
    gen = ctx.cfg.generate
    w_id = torch.from_numpy(plan.codes[[it.code_row for it in items]]).to(ctx.device)
    own = [i for i, it in enumerate(items) if it.source_image]
    if own:  # a render that starts from a photo takes that photo's identity code (its pose, light, session)
        w_id[own] = torch.stack([ctx.source_codes[ctx.source_rows[items[i].source_image]][0] for i in own])
    cls = torch.tensor([it.expression_index for it in items], device=ctx.device)
    inten = torch.tensor([it.intensity for it in items], device=ctx.device)
    w_exp = expression_target(ctx.codes, cls, inten)
    # Repeat 0 is the clean target; later repeats vary around it, each from its own seed.
    jit = torch.tensor([it.repeat > 0 for it in items], device=ctx.device, dtype=torch.float32)[:, None]
    if gen.exp_jitter > 0:
        z = torch.stack([_noise(it.noise_seed, w_exp.shape[1]) for it in items]).to(ctx.device)
        w_exp = w_exp + jit * gen.exp_jitter * ctx.exp_scale * z
    if gen.id_jitter > 0:
        z = torch.stack([_noise(it.nuisance_seed, w_id.shape[1]) for it in items]).to(ctx.device)
        w_id = w_id + jit * gen.id_jitter * ctx.id_scale * z
    return w_id, w_exp


@torch.no_grad()
def render_items(ctx: RenderContext, plan: SweepPlan, items: list[PlanItem]) -> np.ndarray:
    """uint8 NHWC renders of `items` (what goes into the PNGs)."""
    w_id, w_exp = sample_codes(ctx, plan, items)
    rows = [_drawn_over(ctx, it) for it in items]
    photo = [i for i, r in enumerate(rows) if r is not None]
    alone = [i for i, r in enumerate(rows) if r is None]  # novel identities (or no photos)
    composite, res = ctx.cfg.generate.composite, ctx.resolution
    out = torch.empty(len(items), 3, res, res, device=ctx.device)
    if alone:
        out[alone] = render_from_codes(
            ctx.generator, composite, w_id[alone], w_exp[alone], ctx.codes["exp_neutral"], res
        )
    if photo:
        base = to_model_range(ctx.images[torch.tensor([rows[i] for i in photo])], ctx.device)
        w_exp_base = None
        if needs_photo_code(composite):
            w_exp_base = torch.stack([_photo_expression(ctx, items[i], rows[i]) for i in photo])
        out[photo] = render_over_photo(ctx.generator, composite, w_id[photo], w_exp[photo], w_exp_base, base, res)[0]
    return to_uint8(out.clamp(-1, 1))


def _drawn_over(ctx: RenderContext, it: PlanItem) -> int | None:
    """Row in `images` of the photo this item is drawn over, or None (codes alone)."""
    if it.source_image:
        return ctx.source_rows[it.source_image] if ctx.over_photo else None
    return ctx.base_rows.get(it.identity_id)


def _photo_expression(ctx: RenderContext, it: PlanItem, row: int) -> torch.Tensor:
    """The expression code of the photo an item is drawn over (the difference composite reads it)."""
    return ctx.source_codes[row][1] if it.source_image else ctx.base_exp[it.identity_id]


def write_png(path: Path, data: bytes) -> None:
    """Atomic PNG write (a seam for tests that simulate a full disk)."""
    atomic_write_bytes(path, data)


# --------------------------------------------------------------------------- checks


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


# --------------------------------------------------------------------------- one shard


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

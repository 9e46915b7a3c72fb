"""What rendering and checking a plan's shards needs, loaded once per process: `get_context`."""

from __future__ import annotations

import functools
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from manifests.labels import dataset_kind
from pipeline.cache import load_tensors
from pipeline.config import Config
from pipeline.core.checkpoint import CheckpointError
from pipeline.core.data import to_model_range
from pipeline.core.device import resolve_device
from pipeline.core.legacy import stored_config
from pipeline.core.trained import OpenedCheckpoint, open_checkpoint
from pipeline.generate.plan import SweepPlan
from pipeline.judges import load_gate_judges
from pipeline.quality.facenet import IdentityScorer, make_identity_scorer
from pipeline.swaps import draws_over_photo, needs_photo_code


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
    # The config is part of the key: thresholds and the identity backend live in the context.
    key = (plan.key + json.dumps(plan.meta["config"], sort_keys=True), str(device))
    with _CONTEXT_LOCK:
        if key not in _CONTEXTS:
            cfg = stored_config(plan.meta["config"], f"plan {plan.key}")
            dev = device or resolve_device(cfg.generate.device, "generate.device")
            _CONTEXTS.clear()  # one plan at a time per process: do not pile up models
            _CONTEXTS[key] = _load_context(plan, cfg, dev)
        return _CONTEXTS[key]


def _load_context(plan: SweepPlan, cfg: Config, device: torch.device) -> RenderContext:
    opened = _opened_checkpoint(plan)
    nets, ckpt = opened.networks(device), opened.payload
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
    codes = {k: v.to(device) for k, v in ckpt["codes"].items()}
    base_rows, source_rows = _photo_rows(plan, labels, cfg.data.root)
    photo_codes = functools.partial(
        _photo_codes, nets.encoder, images, device=device, batch_size=cfg.generate.batch_size
    )
    base_exp = {}
    if needs_photo_code(cfg.generate.composite):  # one pass per identity's base photo, not per render
        base_codes = photo_codes(list(base_rows.values()))
        base_exp = {ident: base_codes[row][1] for ident, row in base_rows.items()}
    return RenderContext(
        cfg=cfg,
        plan_key=plan.key,
        generator=nets.generator_ema,
        classifier=clf,
        scorer=scorer,
        identity_threshold=q.identity_threshold_for(scorer.name),
        codes=codes,
        **_jitter_scales(codes),
        device=device,
        resolution=res,
        labels=labels,
        images=images,
        procedural=procedural,
        checkpoint_sha256=opened.sha256,
        checkpoint_step=int(ckpt["global_step"]),
        base_rows=base_rows,
        base_exp=base_exp,
        over_photo=draws_over_photo(cfg.generate.composite, nets.generator_ema.has_mask),
        source_rows=source_rows,
        source_codes=photo_codes(sorted(set(source_rows.values()))),
    )


def _opened_checkpoint(plan: SweepPlan) -> OpenedCheckpoint:
    """The plan's checkpoint (the one planning read, in the same process), refused if it changed since."""
    path = Path(plan.meta["checkpoint"]["path"])
    opened = open_checkpoint(path)
    want = plan.render_key["checkpoint_sha256"]
    if opened.sha256 != want:
        raise CheckpointError(
            f"{path} changed since the plan was made (sha256 {opened.sha256[:12]} != {want[:12]}); "
            "rerun generation from scratch (overwrite) or restore the checkpoint"
        )
    return opened


def _jitter_scales(codes: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The per-dimension spread of the class centroids (expression) and of the fitted identity Gaussian,
    so a jitter of 0.1 means "a tenth of the natural variation" in either code."""
    present = (
        codes["exp_present"].bool()
        if "exp_present" in codes
        else torch.ones(codes["exp_centroids"].shape[0], dtype=torch.bool)
    )
    cent = codes["exp_centroids"][present]
    exp_scale = cent.std(0) if cent.shape[0] > 1 else torch.ones_like(cent[0])
    return {"exp_scale": exp_scale, "id_scale": codes["id_chol"].square().sum(1).sqrt()}


def _photo_rows(plan: SweepPlan, labels: pd.DataFrame, root: Path) -> tuple[dict[str, int], dict[str, int]]:
    """(identity -> row of its base photo, source photo path -> row) in the data's images."""
    row_of_path = {p: i for i, p in enumerate(labels["path"])}
    named = [p.base_image for p in plan.identities if p.base_image]
    named += sorted({it.source_image for it in plan.items if it.source_image})
    missing = [p for p in named if p not in row_of_path]
    if missing:
        raise ValueError(f"{root}: source photo(s) named in the plan are not in the data: {missing[:5]}")
    base_rows = {p.identity_id: row_of_path[p.base_image] for p in plan.identities if p.base_image}
    source_rows = {it.source_image: row_of_path[it.source_image] for it in plan.items if it.source_image}
    return base_rows, source_rows


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

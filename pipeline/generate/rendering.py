"""Render plan items to uint8 images: codes from the plan, target codes and per-sample seeds.

Every sample is rendered from its own codes and seeds, never from a shared random stream, so an
image does not depend on which other samples share its batch or which shard ran first.
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline.core.codes import expression_target
from pipeline.core.data import to_model_range
from pipeline.generate.context import RenderContext
from pipeline.generate.plan import PlanItem, SweepPlan
from pipeline.swaps import needs_photo_code, render_from_codes, render_over_photo
from pipeline.train.grids import to_uint8


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

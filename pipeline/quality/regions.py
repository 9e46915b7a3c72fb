"""Fidelity where the expression is: L1, PSNR and SSIM over the pixels a swap must change, and the rest.

A swap changes a mouth, brows and eyes: a few hundred of a 64 px face's 4,096 pixels. Over the whole
image, SSIM and PSNR are dominated by the face, pose, light and background that stay as they were,
so a render that copies its source photo scores well there while drawing no expression at all.
Scored apart, the changed region reads the expression and the unchanged region reads how well the
rest of the photo is kept; the copied source is the reference for both (perfect on the unchanged
region, poor on the changed one).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.quality.ssim import ssim_map

# |truth - source| in [-1, 1] image units (0.05 of the range, about 13 of 255 levels): above the
# procedural renderer's resampling noise, below the faintest brow or mouth edit.
CHANGE_THRESHOLD = 0.1
PSNR_CAP = 100.0  # dB for a region reproduced exactly (the MSE is 0), so means stay finite
REGIONS = ("changed", "unchanged")
REGION_METRICS = ("l1", "psnr", "ssim")


def changed_region(
    truth: torch.Tensor, source: torch.Tensor, threshold: float = CHANGE_THRESHOLD, dilate: int = 1
) -> torch.Tensor:
    """(N, 1, H, W) 0/1 map of the pixels a swap must change: where the truth differs from its source.

    Truth and source are the same person in the same session and light, with another expression, so
    where they differ (in any channel, by more than `threshold`) is the expression and nothing else.
    The map is dilated by `dilate` pixels so the soft edges of a mouth or brow count as changed.
    Images are NCHW in [-1, 1]. The one definition: evaluate reads it, and so should any training loss.
    """
    mask = ((truth - source).abs().amax(1, keepdim=True) > threshold).float()
    return F.max_pool2d(mask, 2 * dilate + 1, stride=1, padding=dilate) if dilate else mask


def _masked_mean(values: np.ndarray, region: np.ndarray) -> float:
    """Mean of `values` (HW, NaN = not scored) over the True pixels of `region`; NaN if none."""
    picked = values[region]
    picked = picked[~np.isnan(picked)]
    return float(picked.mean()) if picked.size else float("nan")


def _one_image(render: np.ndarray, truth: np.ndarray, changed: np.ndarray) -> dict[str, float]:
    err = np.abs(render.astype(np.float64) - truth.astype(np.float64)) / 255.0  # HWC, [0, 1]
    ssim_px = ssim_map(render, truth, data_range=255)
    out = {}
    for name, region in zip(REGIONS, (changed, ~changed), strict=True):
        l1, mse = _masked_mean(err.mean(-1), region), _masked_mean((err**2).mean(-1), region)
        out[f"l1_{name}"] = l1
        out[f"psnr_{name}"] = float("nan") if np.isnan(mse) else min(PSNR_CAP, float(-10 * np.log10(mse + 1e-300)))
        out[f"ssim_{name}"] = _masked_mean(ssim_px, region)
    return out


def region_scores(render_u8: np.ndarray, truth_u8: np.ndarray, changed: np.ndarray) -> dict[str, np.ndarray]:
    """Per image: L1 (0-1 scale), PSNR (dB, capped at 100) and SSIM over the changed region and the rest.

    Renders and truths are uint8 NHWC; `changed` is an (N, H, W) boolean map (`changed_region`).
    SSIM is scikit-image's per-pixel map (`ssim_map`) averaged over the region; its 11 px window
    reaches a few pixels across the region's edge, so a copied source scores just under 1, not 1,
    on the unchanged region next to a changed mouth. An image whose region is empty (a swap to the
    source's own expression has no changed pixels) scores NaN there: average with `np.nanmean`.
    Keys: "l1_changed", "psnr_changed", "ssim_changed", "l1_unchanged", ...
    """
    if not (render_u8.shape == truth_u8.shape and render_u8.shape[:3] == changed.shape):
        raise ValueError(f"shapes differ: render {render_u8.shape}, truth {truth_u8.shape}, region {changed.shape}")
    per_image = [_one_image(r, t, c) for r, t, c in zip(render_u8, truth_u8, changed.astype(bool), strict=True)]
    return {k: np.array([p[k] for p in per_image]) for k in per_image[0]} if per_image else {}


def region_keys() -> list[str]:
    """The keys `region_scores` returns, in the order reports list them."""
    return [f"{metric}_{region}" for region in REGIONS for metric in REGION_METRICS]

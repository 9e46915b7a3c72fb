"""Target codes computed after training and saved with the checkpoint.

- expression targets: per-class centroid of w_exp over the training split at every intensity the
  split has (anchors), with intensity as piecewise-linear interpolation from the neutral centroid
  through them, because the code space is not linear in intensity (benchmarks/bench_gan.py prints
  how renders at the straight-line and at the fitted codes are read);
- novel identities: a Gaussian fitted to the per-identity mean w_id.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.core.checkpoint import CheckpointError, save_checkpoint
from pipeline.core.data import TrainData, dataset_key, load_split
from pipeline.core.trained import load_trained


@torch.no_grad()
def encode_all(encoder: torch.nn.Module, data: TrainData, device: torch.device, batch_size: int = 128):
    res = data.images.shape[-1]
    ids, exps = [], []
    encoder.eval()
    for start in range(0, data.n, batch_size):
        idx = torch.arange(start, min(start + batch_size, data.n))
        w_id, w_exp = encoder(data.batch(idx, res, 1.0, device))
        ids.append(w_id.cpu())
        exps.append(w_exp.cpu())
    return torch.cat(ids), torch.cat(exps)


@torch.no_grad()
def fit_target_codes(
    encoder: torch.nn.Module, data: TrainData, num_classes: int, device: torch.device
) -> dict[str, torch.Tensor]:
    w_id, w_exp = encode_all(encoder, data, device)
    exp_dim = w_exp.shape[1]
    centroids = torch.zeros(num_classes, exp_dim)
    present = torch.zeros(num_classes, dtype=torch.bool)
    for c in range(num_classes):
        mask = data.labels == c
        if not mask.any():
            continue
        top = data.intensity_code[mask].max()
        sel = mask & (data.intensity_code == top)
        centroids[c] = w_exp[sel].mean(0)
        present[c] = True
    neutral = centroids[0] if present[0] else w_exp.mean(0)
    # Anchors at every intensity above 0 the split has (photos: intensity unknown, counted as 1).
    levels = torch.unique(data.intensity_code[data.intensity_code > 0]).sort().values
    anchors = torch.zeros(num_classes, len(levels), exp_dim)
    anchor_present = torch.zeros(num_classes, len(levels), dtype=torch.bool)
    for c in range(1, num_classes):  # neutral has no intensity: its target is always `neutral`
        for k, level in enumerate(levels.tolist()):
            sel = (data.labels == c) & (data.intensity_code == level)
            if sel.any():
                anchors[c, k] = w_exp[sel].mean(0)
                anchor_present[c, k] = True
    per_id = torch.stack([w_id[data.identity == i].mean(0) for i in range(len(data.identity_names))])
    mean = per_id.mean(0)
    centred = per_id - mean
    cov = centred.T @ centred / max(per_id.shape[0] - 1, 1)
    # Shrink towards the diagonal: there are fewer identities than dimensions.
    cov = 0.8 * cov + 0.2 * torch.diag(torch.diag(cov)) + 1e-5 * torch.eye(cov.shape[0])
    chol = torch.linalg.cholesky(cov)
    return {
        "exp_centroids": centroids,
        "exp_present": present,
        "exp_neutral": neutral,
        "exp_levels": levels.float() / 100,
        "exp_anchors": anchors,
        "exp_anchor_present": anchor_present,
        "id_mean": mean,
        "id_chol": chol,
    }


def expression_target(codes: dict[str, torch.Tensor], class_idx: torch.Tensor, intensity: torch.Tensor) -> torch.Tensor:
    """w_exp for (class, intensity): piecewise-linear from the neutral centroid through the class's anchors.

    Between two fitted intensities the code is interpolated; past the last one the last segment is
    extended. Checkpoints from before anchors existed interpolate from neutral to the class centroid.
    Neutral (class 0) is the neutral centroid at any intensity.
    """
    cent = codes["exp_centroids"][class_idx]
    neutral = codes["exp_neutral"].expand_as(cent)
    t = intensity.to(device=cent.device, dtype=cent.dtype)
    if "exp_anchors" not in codes:
        return torch.lerp(neutral, cent, t.unsqueeze(1))
    out = torch.lerp(neutral, cent, t.unsqueeze(1))  # classes without anchors (none in a fitted split)
    zero = torch.zeros(1, dtype=cent.dtype, device=cent.device)
    for c in torch.unique(class_idx).tolist():
        rows = class_idx == c
        have = codes["exp_anchor_present"][c]
        if c == 0:
            out[rows] = codes["exp_neutral"]
        elif have.any():
            levels = torch.cat([zero, codes["exp_levels"][have].to(cent.dtype)])
            points = torch.cat([codes["exp_neutral"][None], codes["exp_anchors"][c][have]])
            tc = t[rows]
            # segment k joins levels[k] and levels[k + 1]; intensities past the ends extend the end segments
            k = (torch.searchsorted(levels, tc, right=True) - 1).clamp(0, len(levels) - 2)
            lo, hi = levels[k], levels[k + 1]
            w = ((tc - lo) / (hi - lo)).unsqueeze(1)
            out[rows] = torch.lerp(points[k], points[k + 1], w)
    return out


def sample_identity(codes: dict[str, torch.Tensor], generator: torch.Generator) -> torch.Tensor:
    """One novel identity code from the Gaussian fitted to the training identities' w_id (float32, CPU)."""
    mean, chol = codes["id_mean"].float().cpu(), codes["id_chol"].float().cpu()
    return mean + chol @ torch.randn(mean.shape[0], generator=generator)


def refit_codes(checkpoint: Path, data_root: Path | None = None) -> dict[str, torch.Tensor]:
    """Re-derive a finished checkpoint's target codes from its encoder and training split, in place.

    For checkpoints written before a change to how codes are fitted (the encoder and generator are
    untouched, so renders of a given code do not change). Refuses data other than what it was
    trained on. The checkpoint is rewritten atomically; its file hash changes.
    """
    cfg, nets, ckpt = load_trained(checkpoint)
    root = Path(data_root or cfg.data.root)
    if dataset_key(root) != ckpt.get("data_key"):
        raise CheckpointError(f"{root}: not the data {checkpoint} was trained on (content key differs)")
    device = next(nets.encoder.parameters()).device
    data = load_split(root, cfg.model.max_resolution, "train", cfg.data.cache_dir)
    codes = fit_target_codes(nets.encoder, data, cfg.model.num_classes, device)
    dtype = ckpt["codes"]["exp_centroids"].dtype  # a half-precision release stays half
    ckpt["codes"] = {k: v.to(dtype) if v.is_floating_point() else v for k, v in codes.items()}
    save_checkpoint(Path(checkpoint), {k: v for k, v in ckpt.items() if k != "format"})
    return ckpt["codes"]

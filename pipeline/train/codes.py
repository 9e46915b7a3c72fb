"""Target codes computed after training and saved with the checkpoint.

- expression targets: per-class centroid of w_exp over the training split at the highest
  intensity, with intensity as interpolation from the neutral centroid;
- novel identities: a Gaussian fitted to the per-identity mean w_id.
"""

from __future__ import annotations

import torch

from pipeline.train.data import TrainData


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
        "id_mean": mean,
        "id_chol": chol,
    }


def expression_target(codes: dict[str, torch.Tensor], class_idx: torch.Tensor, intensity: torch.Tensor) -> torch.Tensor:
    """w_exp for (class, intensity): lerp from the neutral centroid to the class centroid."""
    cent = codes["exp_centroids"][class_idx]
    neutral = codes["exp_neutral"].expand_as(cent)
    return torch.lerp(neutral, cent, intensity.to(cent.dtype).unsqueeze(1))


def sample_identities(codes: dict[str, torch.Tensor], n: int, generator: torch.Generator) -> torch.Tensor:
    z = torch.randn(n, codes["id_mean"].shape[0], generator=generator)
    return codes["id_mean"] + z @ codes["id_chol"].T

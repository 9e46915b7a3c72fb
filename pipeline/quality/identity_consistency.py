"""Does a face keep one identity across its expressions? Figures that need no ground-truth image.

A novel identity (an identity code drawn from the fitted Gaussian, no photo) has no true image to
compare with, so its renders are judged the way a recogniser would see them: the embeddings of one
identity's renders across expressions must lie close together and apart from other identities'.
The same figures over real photos and over renders of real identities put them on one scale.
"""

from __future__ import annotations

import torch


def identity_consistency(embeddings: torch.Tensor) -> dict[str, float]:
    """Figures of unit embeddings shaped (identities, renders per identity, dim), at least 2 x 2.

    same: mean cosine between two renders of one identity; other: between renders of two identities;
    top1: leave-one-out nearest-identity accuracy (each render against the mean of every identity's
    renders, its own identity's mean taken without it).
    """
    n, k, _ = embeddings.shape
    if n < 2 or k < 2:
        raise ValueError(f"identity consistency needs at least 2 identities x 2 renders, got {n} x {k}")
    e = torch.nn.functional.normalize(embeddings.float(), dim=-1)
    flat = e.reshape(n * k, -1)
    sims = flat @ flat.T
    owner = torch.arange(n).repeat_interleave(k)
    same_id = owner[:, None] == owner[None, :]
    off_diag = ~torch.eye(n * k, dtype=torch.bool)
    sums = e.sum(1)  # (n, dim)
    protos = torch.nn.functional.normalize(sums, dim=-1)
    to_protos = flat @ protos.T  # (n*k, n)
    own_wo_self = torch.nn.functional.normalize(sums[owner] - flat, dim=-1)
    to_protos[torch.arange(n * k), owner] = (flat * own_wo_self).sum(1)
    return {
        "same": float(sims[same_id & off_diag].mean()),
        "other": float(sims[~same_id].mean()),
        "top1": float((to_protos.argmax(1) == owner).float().mean()),
    }

"""Gate thresholds derived from real data instead of guessed.

On the real validation split (identities never seen in training), with the independent judges:
- identity: every image's cosine to its own identity's prototype (mean embedding of that
  identity's *other* images) is a "same" score, its cosine to every other identity's prototype a
  "different" score; the threshold sits at their equal-error point. This is the same comparison a
  render gets (render vs the source identity's prototype).
- expression: the probability threshold that keeps 95% of the correctly classified real images
  (`calibrate_expression_threshold`), pooled and per expression (`calibrate_expression_thresholds`;
  generation uses the per-class ones unless `quality.expression_calibration: pooled`), with the
  classifier's real-val accuracy recorded beside it.
The result is stored in the checkpoint (`calibration`) and used by generation unless
`quality.thresholds: config` asks for the fixed config values.

Photo datasets are judged for identity by FaceNet, whose threshold generation calibrates the same
way on the dataset's photos (`calibrate_photo_identity_threshold`): FaceNet's weights are a
generation-time input, not part of the checkpoint.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from pipeline.config import Config
from pipeline.expressions import EXPRESSIONS
from pipeline.judging import load_eval_judges
from pipeline.quality.facenet import IdentityScorer
from pipeline.quality.gates import (
    calibrate_expression_threshold,
    calibrate_expression_thresholds,
    calibrate_identity_threshold,
)
from pipeline.train.data import load_split


@torch.no_grad()
def calibrate_thresholds(cfg: Config, ckpt: dict[str, Any], device: torch.device, split: str = "val") -> dict[str, Any]:
    clf, emb = load_eval_judges(cfg, ckpt, device)
    data = load_split(cfg.data.root, cfg.model.max_resolution, split, cfg.data.cache_dir)
    full = cfg.model.max_resolution
    probs, embs = [], []
    for start in range(0, data.n, 128):
        x = data.batch(torch.arange(start, min(start + 128, data.n)), full, 1.0, device)
        probs.append(torch.softmax(clf(x), 1).cpu())
        embs.append(emb.embed(x).cpu())
    p = torch.cat(probs)
    e = torch.cat(embs).double()
    y = data.labels
    p_target = p[torch.arange(len(y)), y].numpy()
    correct = (p.argmax(1) == y).numpy()
    labels = y.numpy()
    t_expr = calibrate_expression_threshold(p_target, correct)
    t_per_class = calibrate_expression_thresholds(p_target, correct, labels, EXPRESSIONS)

    same, diff = leave_one_out_scores(e, data.identity)
    t_id, eer = calibrate_identity_threshold(same.numpy(), diff.numpy())
    return {
        "split": split,
        "n_images": int(data.n),
        "n_identities": len(data.identity_names),
        "embedder_identity_threshold": t_id,
        "identity_eer": eer,
        "expression_threshold": t_expr,
        "expression_val_accuracy": float(np.mean(correct)),
        "expression_thresholds": t_per_class,
        # The share of each class's real val images that pass the pooled threshold: what a single
        # threshold would do to that class (the card shows it beside the per-class values).
        "expression_val_pass_pooled": {
            name: float(np.mean((correct & (p_target >= t_expr))[labels == k]))
            for k, name in enumerate(EXPRESSIONS)
            if (labels == k).any()
        },
    }


def leave_one_out_scores(emb: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """("same", "different") cosines of unit embeddings against identity prototypes.

    "Same": each image against the mean of its identity's *other* images (identities with one image
    give none); "different": each image against every other identity's prototype. This is the
    comparison a render gets at generation time (render vs its source identity's prototype).
    """
    emb = emb.double()
    n_ids = int(ids.max()) + 1
    sums = torch.zeros(n_ids, emb.shape[1], dtype=torch.float64).index_add_(0, ids, emb)
    counts = torch.bincount(ids, minlength=n_ids).double()
    present = counts > 0
    protos = torch.nn.functional.normalize(sums / counts.clamp(min=1)[:, None], dim=1)
    own = (sums[ids] - emb) / (counts[ids] - 1).clamp(min=1)[:, None]
    same = (torch.nn.functional.normalize(own, dim=1) * emb).sum(1)[counts[ids] > 1]
    cos_all = emb @ protos.T
    mask = present[None, :].expand_as(cos_all).clone()
    mask[torch.arange(len(ids)), ids] = False
    return same, cos_all[mask]


@torch.no_grad()
def calibrate_photo_identity_threshold(
    scorer: IdentityScorer,
    images: torch.Tensor,
    identities: list[str],
    max_images: int = 300,
) -> dict[str, Any]:
    """FaceNet's identity threshold at the equal-error point on real photos of distinct people.

    FaceNet cosines between two photos of one person depend on the photo source (resolution, crop,
    pose range), so a fixed threshold copied from elsewhere passes or fails renders for reasons of
    its own. The identities are taken in sorted order until ``max_images`` is reached; images where
    no face is found are left out (and counted).
    """
    if len(identities) != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {len(identities)} identity labels")
    names = sorted(set(identities))
    by_name: dict[str, list[int]] = {}
    for i, name in enumerate(identities):
        by_name.setdefault(name, []).append(i)
    rows: list[int] = []
    for name in names:
        if len(rows) + len(by_name[name]) > max_images and rows:
            break
        rows += by_name[name]
    emb, found = scorer.embed(images[torch.as_tensor(rows)])
    keep = found.nonzero().flatten()
    codes = {name: k for k, name in enumerate(sorted({identities[rows[i]] for i in keep.tolist()}))}
    ids = torch.tensor([codes[identities[rows[i]]] for i in keep.tolist()], dtype=torch.long)
    if len(codes) < 2 or int((torch.bincount(ids) > 1).sum()) < 1:
        raise ValueError(
            f"identity calibration needs at least two people with a face found and one with two images; "
            f"found faces in {int(found.sum())} of {len(rows)} images of {len(codes)} people"
        )
    same, diff = leave_one_out_scores(emb[keep], ids)
    t, eer = calibrate_identity_threshold(same.numpy(), diff.numpy())
    return {
        "backend": scorer.name,
        "identity_threshold": t,
        "identity_eer": eer,
        "n_images": len(rows),
        "n_faces": int(found.sum()),
        "n_identities": len(codes),
    }

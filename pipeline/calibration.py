"""Gate thresholds derived from real data instead of guessed.

On the real validation split (identities never seen in training), with the independent judges:
- identity: every image's cosine to its own identity's prototype (mean embedding of that
  identity's *other* images) is a "same" score, its cosine to every other identity's prototype a
  "different" score; the threshold sits at their equal-error point. This is the same comparison a
  render gets (render vs the source identity's prototype).
- expression: the probability threshold that keeps 95% of the correctly classified real images
  (`calibrate_expression_threshold`), with the classifier's real-val accuracy recorded beside it.
The result is stored in the checkpoint (`calibration`) and used by generation unless
`quality.thresholds: config` asks for the fixed config values.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from pipeline.config import Config
from pipeline.judging import load_eval_judges
from pipeline.quality.gates import calibrate_expression_threshold, calibrate_identity_threshold
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
    t_expr = calibrate_expression_threshold(p_target, correct)

    ids = data.identity
    n_ids = len(data.identity_names)
    sums = torch.zeros(n_ids, e.shape[1], dtype=torch.float64).index_add_(0, ids, e)
    counts = torch.bincount(ids, minlength=n_ids).double()
    protos = torch.nn.functional.normalize(sums / counts[:, None], dim=1)
    # Leave-one-out prototype of the image's own identity, so "same" never compares an image with itself.
    own = (sums[ids] - e) / (counts[ids] - 1).clamp(min=1)[:, None]
    same = (torch.nn.functional.normalize(own, dim=1) * e).sum(1)[counts[ids] > 1]
    cos_all = e @ protos.T
    mask = torch.ones_like(cos_all, dtype=torch.bool)
    mask[torch.arange(len(ids)), ids] = False
    diff = cos_all[mask]
    t_id, eer = calibrate_identity_threshold(same.numpy(), diff.numpy())
    return {
        "split": split,
        "n_images": int(data.n),
        "n_identities": n_ids,
        "embedder_identity_threshold": t_id,
        "identity_eer": eer,
        "expression_threshold": t_expr,
        "expression_val_accuracy": float(np.mean(correct)),
    }

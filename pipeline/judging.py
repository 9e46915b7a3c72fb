"""Independent judges: an expression classifier and identity embedder trained with their own seed.

The GAN was optimised against its training judges, so scoring its renders with them would flatter
it. These second judges see the same real training split but start from another seed, and they
never give the generator a gradient. Training stores them in the final checkpoint; generation and
evaluation load them from there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from models import ExpressionClassifier, IdentityEmbedder
from pipeline.config import Config
from pipeline.train.data import TrainData
from pipeline.train.judges import train_judges

SEED_OFFSET = 1000


def build_eval_judges(cfg: Config, n_identities: int) -> tuple[ExpressionClassifier, IdentityEmbedder]:
    m = cfg.model
    clf = ExpressionClassifier(m.num_classes, input_size=m.max_resolution, channels=m.judge_channels)
    emb = IdentityEmbedder(
        n_identities, embed_dim=m.judge_embed_dim, input_size=m.max_resolution, channels=m.judge_channels
    )
    return clf, emb


def train_eval_judges(
    cfg: Config,
    data: TrainData,
    device: torch.device,
    progress: Callable[[int, dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    clf, emb = build_eval_judges(cfg, len(data.identity_names))
    stats = train_judges(
        clf,
        emb,
        data,
        cfg.train.judge_steps,
        min(cfg.train.batch_size * 2, 128),
        device,
        cfg.train.seed + SEED_OFFSET,
        progress,
        cfg.train.judge_soften,
    )
    return {"classifier": clf.state_dict(), "embedder": emb.state_dict(), "stats": stats}


def load_eval_judges(
    cfg: Config, ckpt: dict[str, Any], device: torch.device
) -> tuple[ExpressionClassifier, IdentityEmbedder]:
    """The independent judges stored in a final or release checkpoint, in eval mode."""
    state = ckpt.get("eval_judges")
    if not state:
        raise ValueError("checkpoint has no independent judges (eval_judges); it is not a finished training run")
    n_ids = state["embedder"]["class_weight"].shape[0]
    clf, emb = build_eval_judges(cfg, n_ids)
    clf.load_state_dict(state["classifier"])
    emb.load_state_dict(state["embedder"])
    return clf.to(device).eval().requires_grad_(False), emb.to(device).eval().requires_grad_(False)

"""A finished checkpoint as ready-to-render networks: what evaluation, generation and refitting share."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from pipeline.config import Config
from pipeline.core.checkpoint import CheckpointError, load_checkpoint
from pipeline.core.device import resolve_device
from pipeline.core.legacy import checkpoint_config
from pipeline.core.networks import Networks, build_networks

RENDER_NETS = ("encoder", "generator_ema")


def load_trained(
    checkpoint: Path, overrides: list[str] | None = None, device: torch.device | None = None
) -> tuple[Config, Networks, dict[str, Any]]:
    """Rebuild the networks a checkpoint was trained with and load them (strictly)."""
    ckpt = load_checkpoint(checkpoint)
    cfg = checkpoint_config(ckpt, str(checkpoint), overrides)
    if not ckpt.get("codes"):
        raise CheckpointError(f"{checkpoint}: training has not finished (no target codes); use checkpoints/final.pt")
    names = json.loads(ckpt["identity_names"])
    nets = build_networks(cfg, len(names))
    try:
        # Release checkpoints (fersynth export) carry only what rendering needs.
        for k, m in nets.modules().items():
            if k in ckpt["nets"]:
                m.load_state_dict(ckpt["nets"][k])
            elif k in RENDER_NETS:
                raise KeyError(f"network {k!r} missing")
    except (RuntimeError, KeyError) as exc:
        raise CheckpointError(f"{checkpoint}: weights do not fit the model its config describes: {exc}") from exc
    nets.to(device or resolve_device(cfg.train.device, "train.device"))
    for m in nets.modules().values():
        m.eval().requires_grad_(False)
    return cfg, nets, ckpt

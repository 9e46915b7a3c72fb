"""Slim release checkpoints: what rendering and scoring need, without optimisers or discriminator."""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.core.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

KEEP_NETS = ("encoder", "generator_ema", "classifier", "embedder")
KEEP_KEYS = (
    "config",
    "data_key",
    "identity_names",
    "stage_idx",
    "stage_step",
    "global_step",
    "alpha",
    "resolution",
    "judges_done",
    "codes",
    "eval_judges",
    "stage_metrics",
    "calibration",
)


def export_release(src: Path, dst: Path, half: bool = False, recalibrate: bool = False) -> Path:
    """Write a render-only checkpoint; `half` stores floating tensors as float16 (loaded back as float32).

    `recalibrate` recomputes the gate thresholds on the real validation split (needs the training
    data): a run calibrated before per-class expression thresholds existed gains them.
    """
    ckpt = load_checkpoint(src)
    if not ckpt.get("codes") or not ckpt.get("eval_judges"):
        raise CheckpointError(f"{src}: training has not finished (no target codes / judges); export final.pt")

    def conv(sd: dict) -> dict:
        return {k: (v.half() if half and v.is_floating_point() else v) for k, v in sd.items()}

    out = {k: ckpt[k] for k in KEEP_KEYS if k in ckpt}
    out["nets"] = {k: conv(ckpt["nets"][k]) for k in KEEP_NETS}
    out["eval_judges"] = {
        **ckpt["eval_judges"],
        "classifier": conv(ckpt["eval_judges"]["classifier"]),
        "embedder": conv(ckpt["eval_judges"]["embedder"]),
    }
    if recalibrate or not ckpt.get("calibration"):  # runs finished before calibration existed: calibrate now
        from pipeline.calibration import calibrate_thresholds
        from pipeline.core.legacy import checkpoint_config

        # On the judges as released (float16 when `half`): the thresholds are for these weights.
        out["calibration"] = calibrate_thresholds(checkpoint_config(ckpt, str(src)), out, torch.device("cpu"))
    out["release_of"] = str(Path(src).name)
    return save_checkpoint(Path(dst), out)

"""Slim release checkpoints: what rendering and scoring need, without optimisers or discriminator."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from pipeline.calibration import calibrate_thresholds
from pipeline.config import ConfigError, config_to_dict
from pipeline.core.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from pipeline.core.data import load_split
from pipeline.core.legacy import checkpoint_config
from pipeline.judges import train_panel_members

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


def export_release(
    src: Path,
    dst: Path,
    half: bool = False,
    recalibrate: bool = False,
    judge_panel: int | None = None,
    overrides: list[str] | None = None,
) -> Path:
    """Write a render-only checkpoint; `half` stores floating tensors as float16 (loaded back as float32).

    `recalibrate` recomputes the gate thresholds on the real validation split (needs the training
    data): a run calibrated before per-class expression thresholds existed gains them.
    `judge_panel` (needs the training data) trains the expression judges that make the gate's panel
    that size (1: the independent judge alone) and recalibrates on the panel.
    `overrides` (`section.field=value`, e.g. `quality.expression_keep=0.995`) change the stored config
    and recalibrate with it.
    """
    ckpt = load_checkpoint(src)
    if not ckpt.get("codes") or not ckpt.get("eval_judges"):
        raise CheckpointError(f"{src}: training has not finished (no target codes / judges); export final.pt")

    def conv(sd: dict) -> dict:
        return {k: (v.half() if half and v.is_floating_point() else v) for k, v in sd.items()}

    out = {k: ckpt[k] for k in KEEP_KEYS if k in ckpt}
    if overrides:
        other = [o for o in overrides if not o.strip().startswith("quality.")]
        if other:  # the networks were trained with the stored model, data and train sections
            raise ConfigError(f"export --set takes gate settings (quality.*) only, got {', '.join(other)}")

        resolved = config_to_dict(checkpoint_config(ckpt, str(src), overrides))  # validates the values
        # Only the fields asked for change: the stored training config stays the record it is.
        stored = ckpt["config"]
        raw = json.loads(stored) if isinstance(stored, str) else dict(stored)
        raw["quality"] = dict(raw.get("quality") or {})
        for field in {o.split("=", 1)[0].strip().removeprefix("quality.").split(".")[0] for o in overrides}:
            raw["quality"][field] = resolved["quality"][field]
        out["config"] = json.dumps(raw, sort_keys=True) if isinstance(stored, str) else raw
        recalibrate = True
    out["nets"] = {k: conv(ckpt["nets"][k]) for k in KEEP_NETS}
    judges = dict(ckpt["eval_judges"])
    if judge_panel is not None:
        judges["panel"] = _panel_members(ckpt, src, judge_panel)
        recalibrate = True
    out["eval_judges"] = {
        **judges,
        "classifier": conv(judges["classifier"]),
        "embedder": conv(judges["embedder"]),
        **({"panel": [conv(m) for m in judges["panel"]]} if judges.get("panel") else {}),
    }
    if recalibrate or not ckpt.get("calibration"):  # runs finished before calibration existed: calibrate now
        # On the judges as released (float16 when `half`): the thresholds are for these weights.
        out["calibration"] = calibrate_thresholds(checkpoint_config(out, str(src)), out, torch.device("cpu"))
    out["release_of"] = str(Path(src).name)
    return save_checkpoint(Path(dst), out)


def _panel_members(ckpt: dict, src: Path, size: int) -> list[dict[str, torch.Tensor]]:
    """The checkpoint's panel members beyond the independent judge, grown or cut to `size` in all."""

    have = list(ckpt["eval_judges"].get("panel") or [])
    if len(have) >= size - 1:
        return have[: size - 1]
    cfg = checkpoint_config(ckpt, str(src), [f"train.judge_panel={size}"])
    data = load_split(cfg.data.root, cfg.model.max_resolution, "train", cfg.data.cache_dir)
    # Members are seeded by their place in the panel: the new ones continue after those it has.
    new = train_panel_members(cfg, data, torch.device("cpu"), size)
    return have + new[len(have) :]

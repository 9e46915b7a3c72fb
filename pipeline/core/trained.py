"""A finished checkpoint as ready-to-render networks: what evaluation, generation and refitting share."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pipeline.config import Config
from pipeline.core.checkpoint import CheckpointError, load_checkpoint, read_checkpoint
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
    return cfg, trained_networks(cfg, ckpt, checkpoint, device), ckpt


def trained_networks(
    cfg: Config, ckpt: dict[str, Any], checkpoint: Path, device: torch.device | None = None
) -> Networks:
    """The networks of a loaded finished checkpoint, in eval mode without gradients, on `device`."""
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
    return nets


@dataclass
class OpenedCheckpoint:
    """A checkpoint read once per process: its payload, the file's sha256 and its own config, parsed once;
    its networks built once per device (generation plans, renders and checks share them)."""

    path: Path
    sha256: str
    payload: dict[str, Any]
    config: Config
    _nets: dict[str, Networks] = field(default_factory=dict)

    def networks(self, device: torch.device) -> Networks:
        with _OPENED_LOCK:
            if str(device) not in self._nets:
                self._nets[str(device)] = trained_networks(self.config, self.payload, self.path, device)
            return self._nets[str(device)]


_OPENED: dict[tuple[str, int, int, int], OpenedCheckpoint] = {}
_OPENED_LOCK = threading.RLock()


def open_checkpoint(path: Path) -> OpenedCheckpoint:
    """The checkpoint at `path`, read again only when the file changed (replaced, or its mtime or size)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    st = path.stat()
    key = (str(path.resolve()), st.st_ino, st.st_mtime_ns, st.st_size)
    with _OPENED_LOCK:
        if key not in _OPENED:
            payload, sha = read_checkpoint(path)
            _OPENED.clear()  # one checkpoint at a time per process: do not pile up models
            _OPENED[key] = OpenedCheckpoint(path, sha, payload, checkpoint_config(payload, str(path)))
        return _OPENED[key]

"""The training set as tensors in memory, with the indices the losses need."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from manifests.labels import dataset_kind, read_labels
from pipeline.cache import load_tensors
from pipeline.expressions import EXPRESSIONS


def to_model_range(images: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """uint8 images (NCHW, [0, 255]) on ``device`` as float32 in [-1, 1], the networks' convention."""
    return images.to(device=device, dtype=torch.float32) / 127.5 - 1.0


@dataclass
class TrainData:
    """Images of one split as uint8 (N,3,R,R) plus labels, identity ids and swap-truth lookups."""

    images: torch.Tensor
    frame: pd.DataFrame
    labels: torch.Tensor  # expression index (N,)
    identity: torch.Tensor  # dense identity index (N,)
    identity_names: list[str]
    # truth[i, k]: row holding identity(i) with row k's (expression, intensity) in i's session, or -1.
    # Only procedural data has such exact ground truth; real photos give an all -1 table.
    truth_key: dict[tuple[int, int, int, int], int]
    session: torch.Tensor  # (N,) session index within identity (procedural nuisance draw), 0 for photos
    intensity_code: torch.Tensor  # (N,) intensity in hundredths

    @property
    def n(self) -> int:
        return int(self.images.shape[0])

    def truth_rows(self, src: torch.Tensor, donor: torch.Tensor) -> torch.Tensor:
        """For each (src, donor) pair, the row with src's identity/session and donor's expression."""
        out = torch.full_like(src, -1)
        for j, (a, b) in enumerate(zip(src.tolist(), donor.tolist(), strict=True)):
            key = (
                int(self.identity[a]),
                int(self.session[a]),
                int(self.labels[b]),
                int(self.intensity_code[b]),
            )
            out[j] = self.truth_key.get(key, -1)
        return out

    def batch(self, idx: torch.Tensor, resolution: int, alpha: float, device: torch.device) -> torch.Tensor:
        """Real images at `resolution` in [-1, 1]; during fade-in blended with the coarser level (ProGAN)."""
        x = to_model_range(self.images[idx], device)
        return downsample(x, resolution, alpha)


def downsample(x: torch.Tensor, resolution: int, alpha: float = 1.0) -> torch.Tensor:
    """Area-downsample to `resolution`; with alpha < 1 blend with the upsampled half-resolution image."""
    if x.shape[-1] != resolution:
        x = F.adaptive_avg_pool2d(x, resolution)
    if alpha < 1.0 and resolution >= 8:
        low = F.interpolate(F.avg_pool2d(x, 2), scale_factor=2, mode="nearest")
        x = torch.lerp(low, x, alpha)
    return x


def session_of(nuisance_json: str | None) -> int:
    # Procedural nuisance JSON carries the session (nuisance draw) index; photos have none.
    if not nuisance_json:
        return 0
    try:
        return int(json.loads(nuisance_json).get("session", 0))
    except (ValueError, TypeError, AttributeError):
        return 0


def load_split(root: Path, resolution: int, split: str, cache_dir: Path | None = None) -> TrainData:
    images, frame = load_tensors(Path(root), resolution, cache_dir)
    mask = (frame["split"] == split).to_numpy()
    if not mask.any():
        raise ValueError(f"{root}: split {split!r} has no images")
    sel = np.flatnonzero(mask)
    images = images[torch.as_tensor(sel)]
    frame = frame.iloc[sel].reset_index(drop=True)
    names = sorted(frame["identity"].unique())
    id_index = {n: i for i, n in enumerate(names)}
    identity = torch.tensor([id_index[v] for v in frame["identity"]], dtype=torch.long)
    labels = torch.tensor(frame["expression_index"].astype(int).to_numpy(), dtype=torch.long)
    inten = frame["intensity"].fillna(1.0).to_numpy()
    intensity_code = torch.tensor(np.rint(inten * 100).astype(int), dtype=torch.long)
    session = torch.tensor([session_of(n) for n in frame["nuisance"]], dtype=torch.long)
    truth_key: dict[tuple[int, int, int, int], int] = {}
    if dataset_kind(frame) == "procedural":
        for i in range(len(frame)):
            truth_key[(int(identity[i]), int(session[i]), int(labels[i]), int(intensity_code[i]))] = i
    return TrainData(images, frame, labels, identity, names, truth_key, session, intensity_code)


def class_counts(data: TrainData, num_classes: int = len(EXPRESSIONS)) -> list[int]:
    return torch.bincount(data.labels, minlength=num_classes).tolist()


def dataset_key(root: Path) -> str:
    """Content key of a labelled dataset: hash of its (path, sha256, split, expression) rows."""

    frame, _ = read_labels(Path(root))
    h = hashlib.sha256()
    for row in sorted(zip(frame["path"], frame["sha256"], frame["split"], frame["expression"], strict=True)):
        h.update("\t".join(row).encode() + b"\n")
    return h.hexdigest()

"""Torch datasets over a generated manifest and over a real labelled table, with one interface.

Both give `(image, label)` by default, or a dict (image, label and the row's labels/metadata) with
`return_dict=True`, so a training script can mix synthetic and real data with `ConcatDataset`.
Images are decoded lazily per item (PIL), so the datasets are cheap to build, pickle into
DataLoader workers, and scale to manifests larger than memory.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset

from manifests.labels import read_labels
from manifests.reader import filter_manifest, read_manifest
from pipeline.io_utils import inside_root

# Filters: a dict of column conditions (see manifests.reader.filter_manifest), one pandas query
# string, or a sequence of query strings.
Filters = Mapping[str, Any] | str | Sequence[str] | None
Transform = Callable[[Image.Image], Any]

# Keys of a dict item besides image/label: the same for both sources, so a DataLoader over a
# ConcatDataset of synthetic and real data collates (default_collate needs equal keys and no None).
# The full row of item i is `dataset.frame.iloc[i]`.
META_KEYS = ("sample_id", "file_name", "identity_id", "expression", "intensity", "source")


def apply_filters(df: pd.DataFrame, filters: Filters) -> pd.DataFrame:
    """`df` filtered by `filters`; an unknown column raises ManifestError listing the valid ones."""
    if filters is None:
        return df
    if isinstance(filters, str):
        return filter_manifest(df, filters)
    if isinstance(filters, Mapping):
        return filter_manifest(df, **dict(filters))
    if isinstance(filters, Sequence) and all(isinstance(f, str) for f in filters):
        return filter_manifest(df, *filters)
    raise TypeError(f"filters must be a dict, a query string or a list of query strings, got {type(filters).__name__}")


def load_image(path: Path, image_size: int | None = None) -> Image.Image:
    with Image.open(path) as im:
        img = im.convert("RGB")
    if image_size is not None and img.size != (image_size, image_size):
        # Same resampling as the tensor cache (pipeline.cache): Lanczos antialiases when shrinking.
        img = img.resize((image_size, image_size), Image.Resampling.LANCZOS)
    return img


def to_tensor(img: Image.Image) -> torch.Tensor:
    """float32 (3, H, W) in [0, 1]: the torchvision ToTensor convention, without the dependency."""
    arr = np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).copy()
    return torch.from_numpy(arr).float().div_(255.0)


class _FrameImageDataset(Dataset):
    """Shared item logic: a frame with a path column and an expression_index column."""

    _path_col = "file_name"

    def __init__(
        self,
        root: Path,
        frame: pd.DataFrame,
        transform: Transform | None,
        return_dict: bool,
        image_size: int | None,
    ) -> None:
        self.root = Path(root)
        self.frame = frame.reset_index(drop=True)
        self.transform = transform
        self.return_dict = return_dict
        self.image_size = image_size
        # Plain numpy arrays index faster than DataFrame rows in __getitem__ and pickle compactly.
        self._paths = self.frame[self._path_col].astype(str).to_numpy()
        self._labels = self.frame["expression_index"].astype(np.int64).to_numpy()

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def labels(self) -> np.ndarray:
        """Expression index of every item (int64), e.g. for class-balanced samplers."""
        return self._labels

    def __getitem__(self, i: int) -> tuple[Any, int] | dict[str, Any]:
        img = load_image(inside_root(self.root, self._paths[i]), self.image_size)
        image = self.transform(img) if self.transform is not None else to_tensor(img)
        label = int(self._labels[i])
        if not self.return_dict:
            return image, label
        row = self.frame.iloc[i]
        intensity = row["intensity"]
        meta = {
            "sample_id": str(row["sample_id"]),
            "file_name": str(self._paths[i]),
            "identity_id": str(row["identity_id"]),
            "expression": str(row["expression"]),
            # Real datasets may have no intensity; NaN (not None) keeps default_collate working.
            "intensity": float("nan") if pd.isna(intensity) else float(intensity),
            "source": self._source(row),
        }
        return {"image": image, "label": label, **meta}

    def _source(self, row: pd.Series) -> str:
        raise NotImplementedError


class ManifestDataset(_FrameImageDataset):
    """Images of a generated dataset (manifests layout), filtered by gate flags, labels or any column.

    `require_pass` keeps only rows whose per-image checks all passed (`all_pass`); `filters` is a
    dict of column conditions (`{"expression": ["happy", "sad"], "intensity": lambda s: s > .5}`),
    a pandas query string, or a list of them. A manifest written by a newer schema version raises
    ManifestError naming both versions (from manifests.reader).
    """

    _path_col = "file_name"

    def __init__(
        self,
        root: Path | str,
        filters: Filters = None,
        transform: Transform | None = None,
        require_pass: bool = True,
        *,
        return_dict: bool = False,
        image_size: int | None = None,
    ) -> None:
        df = read_manifest(Path(root))
        if require_pass:
            df = df[df["all_pass"].eq(True)]
        df = apply_filters(df, filters)
        super().__init__(Path(root), df, transform, return_dict, image_size)

    def _source(self, row: pd.Series) -> str:
        return "synthetic"


class LabelledDataset(_FrameImageDataset):
    """Images of a real (or procedural) labelled dataset (manifests.labels), same interface as ManifestDataset.

    `split` keeps one split or a list of them; `identities` keeps only those identity ids.
    Dict items use the manifest's names too (`identity_id`, `file_name`) so mixed batches collate.
    """

    _path_col = "path"

    def __init__(
        self,
        root: Path | str,
        split: str | Sequence[str] | None = None,
        filters: Filters = None,
        transform: Transform | None = None,
        *,
        identities: Sequence[str] | None = None,
        return_dict: bool = False,
        image_size: int | None = None,
    ) -> None:
        df, _ = read_labels(Path(root))
        if split is not None:
            splits = [split] if isinstance(split, str) else list(split)
            df = df[df["split"].isin(splits)]
        if identities is not None:
            df = df[df["identity"].isin(list(identities))]
        df = apply_filters(df, filters)
        df = df.assign(identity_id=df["identity"])
        super().__init__(Path(root), df, transform, return_dict, image_size)

    @classmethod
    def from_frame(
        cls,
        root: Path | str,
        frame: pd.DataFrame,
        transform: Transform | None = None,
        *,
        return_dict: bool = False,
        image_size: int | None = None,
    ) -> LabelledDataset:
        """Rows of `root`'s labels table picked by the caller (repeats allowed), in their order."""
        ds = cls.__new__(cls)
        _FrameImageDataset.__init__(
            ds, Path(root), frame.assign(identity_id=frame["identity"]), transform, return_dict, image_size
        )
        return ds

    def _source(self, row: pd.Series) -> str:
        return str(row["source"])

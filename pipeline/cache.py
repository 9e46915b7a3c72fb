"""Preprocessed tensor cache: decode and resize a labelled dataset's images once, not every epoch.

The cache file for a resolution holds the images as one uint8 tensor (N, 3, R, R) in sorted-path
order, plus the paths and a content key. The key is sha256 over the resolution and the sorted
(path, sha256) pairs of the labels table, so the cache is rebuilt exactly when an image hash, the
row set or the resolution changes; re-ordering the table only re-indexes. Files are written
atomically and read with torch.load(weights_only=True); a truncated or corrupt file is rebuilt.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from manifests.labels import read_labels
from pipeline.io_utils import atomic_path, inside_root, sha256_bytes

CACHE_VERSION = 1


class CacheError(ValueError):
    """The dataset's images disagree with its labels table (missing file or changed content)."""


@dataclass(frozen=True)
class CacheInfo:
    path: Path
    key: str
    rebuilt: bool
    reason: str  # why it was (re)built: "missing", "stale", "corrupt"; "" when reused
    n_images: int


def cache_key(df: pd.DataFrame, resolution: int) -> str:
    """sha256 over (version, resolution, sorted (path, sha256) pairs) of a labels frame."""
    h = hashlib.sha256(f"fersynth-cache-v{CACHE_VERSION}\nresolution={resolution}\n".encode())
    for path, sha in sorted(zip(df["path"], df["sha256"], strict=True)):
        h.update(f"{path}\t{sha}\n".encode())
    return h.hexdigest()


def cache_path(root: Path, resolution: int, cache_dir: Path | None = None) -> Path:
    return Path(cache_dir or Path(root) / ".cache") / f"tensors-r{resolution}.pt"


def _decode(root: Path, rel: str, sha: str, resolution: int) -> np.ndarray:
    p = inside_root(root, rel)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise CacheError(f"{p}: image listed in labels.parquet is missing") from None
    actual = sha256_bytes(data)
    if actual != sha:
        raise CacheError(
            f"{p}: content changed since labels.parquet was written (sha256 {actual[:12]}…, table says {sha[:12]}…); "
            "re-import or re-make the dataset"
        )
    with Image.open(io.BytesIO(data)) as im:
        img = im.convert("RGB")
    if img.size != (resolution, resolution):
        # Lanczos on a PIL image antialiases when shrinking (its kernel widens with the scale).
        img = img.resize((resolution, resolution), Image.Resampling.LANCZOS)
    # A writable, contiguous copy: torch refuses to wrap PIL's read-only buffer safely.
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))


def _read(path: Path, key: str, n: int, resolution: int) -> tuple[torch.Tensor, list[str]] | str:
    """The cached (images, paths) if `path` is valid for `key`, else the reason it is not."""
    if not path.is_file():
        return "missing"
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # truncated zip, bad pickle, wrong format: all mean "rebuild"
        return "corrupt"
    if not isinstance(obj, dict) or not isinstance(obj.get("images"), torch.Tensor):
        return "corrupt"
    if obj.get("key") != key:
        return "stale"
    images, paths = obj["images"], obj.get("paths")
    if images.dtype != torch.uint8 or tuple(images.shape) != (n, 3, resolution, resolution):
        return "corrupt"
    if not isinstance(paths, list) or len(paths) != n:
        return "corrupt"
    return images, paths


def _build(root: Path, df: pd.DataFrame, resolution: int, key: str, path: Path) -> tuple[torch.Tensor, list[str]]:
    order = sorted(range(len(df)), key=lambda i: df["path"].iat[i])
    images = torch.empty((len(df), 3, resolution, resolution), dtype=torch.uint8)
    for j, i in enumerate(order):
        images[j] = torch.from_numpy(_decode(root, df["path"].iat[i], df["sha256"].iat[i], resolution))
    paths = [df["path"].iat[i] for i in order]
    with atomic_path(path) as tmp:
        torch.save(
            {"key": key, "version": CACHE_VERSION, "resolution": resolution, "images": images, "paths": paths}, tmp
        )
    return images, paths


def load_tensors_info(
    root: Path, resolution: int, cache_dir: Path | None = None
) -> tuple[torch.Tensor, pd.DataFrame, CacheInfo]:
    """Like load_tensors, plus what the cache did (reused or rebuilt, and why)."""
    if resolution < 1:
        raise ValueError(f"resolution must be positive, got {resolution}")
    root = Path(root)
    df, _ = read_labels(root)
    key = cache_key(df, resolution)
    path = cache_path(root, resolution, cache_dir)
    got = _read(path, key, len(df), resolution)
    if isinstance(got, str):
        reason = got
        images, paths = _build(root, df, resolution, key, path)
    else:
        reason = ""
        images, paths = got
    # Cached images are in sorted-path order; index them into the table's row order.
    where = {p: j for j, p in enumerate(paths)}
    try:
        idx = torch.tensor([where[p] for p in df["path"]], dtype=torch.long)
    except KeyError:  # same key but different paths cannot happen unless the file was tampered with
        images, paths = _build(root, df, resolution, key, path)
        reason = "corrupt"
        where = {p: j for j, p in enumerate(paths)}
        idx = torch.tensor([where[p] for p in df["path"]], dtype=torch.long)
    out = images if torch.equal(idx, torch.arange(len(df))) else images[idx]
    return out, df, CacheInfo(path=path, key=key, rebuilt=bool(reason), reason=reason, n_images=len(df))


def load_tensors(root: Path, resolution: int, cache_dir: Path | None = None) -> tuple[torch.Tensor, pd.DataFrame]:
    """uint8 images (N, 3, R, R) in labels-table row order and the labels frame; builds the cache if needed."""
    images, df, _ = load_tensors_info(root, resolution, cache_dir)
    return images, df


def read_rgb_batch(root: Path, names: list[str]) -> torch.Tensor:
    """PNG files under `root` as one uint8 (N, 3, H, W) tensor, in the order named (renders: no cache)."""
    return torch.from_numpy(np.stack([np.asarray(Image.open(root / n).convert("RGB")) for n in names])).permute(
        0, 3, 1, 2
    )

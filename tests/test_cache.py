"""The preprocessed tensor cache: content-keyed reuse, rebuilds, corruption, verification, order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from manifests.labels import COLUMNS, write_labels
from pipeline.cache import CacheError, cache_path, load_tensors, load_tensors_info
from pipeline.expressions import EXPRESSIONS
from pipeline.io_utils import sha256_file


def _write_image(root: Path, rel: str, seed: int, size: int = 32) -> str:
    arr = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(p)
    return sha256_file(p)


def _dataset(root: Path, n: int = 6) -> pd.DataFrame:
    rows = []
    for i in range(n):
        rel = f"images/{i:02d}.png"
        exp = EXPRESSIONS[i % 7]
        rows.append(
            {
                "sample_id": f"s{i}",
                "path": rel,
                "identity": f"id{i}",
                "expression": exp,
                "expression_index": EXPRESSIONS.index(exp),
                "intensity": None,
                "aus": None,
                "identity_factors": None,
                "nuisance": None,
                "split": "train",
                "sha256": _write_image(root, rel, i),
                "width": 32,
                "height": 32,
                "source": "test",
                "original_path": None,
            }
        )
    df = pd.DataFrame(rows)[COLUMNS]
    write_labels(root, df, {"kind": "test"})
    return df


def _expected(root: Path, rel: str, resolution: int) -> torch.Tensor:
    img = Image.open(root / rel).convert("RGB")
    if img.size != (resolution, resolution):
        img = img.resize((resolution, resolution), Image.Resampling.LANCZOS)
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)


def test_built_once_then_reused_in_table_order(tmp_path: Path) -> None:
    df = _dataset(tmp_path)
    images, frame, info = load_tensors_info(tmp_path, 32)
    assert info.rebuilt and info.reason == "missing" and info.path == tmp_path / ".cache" / "tensors-r32.pt"
    assert images.dtype == torch.uint8 and images.shape == (6, 3, 32, 32)
    assert list(frame["path"]) == list(df["path"])
    for i, rel in enumerate(frame["path"]):
        assert torch.equal(images[i], _expected(tmp_path, rel, 32))
    mtime = info.path.stat().st_mtime_ns
    again, _, info2 = load_tensors_info(tmp_path, 32)
    assert not info2.rebuilt and info2.path.stat().st_mtime_ns == mtime
    assert torch.equal(again, images)
    # The file is plain tensors + strings: loadable with weights_only.
    obj = torch.load(info.path, weights_only=True)
    assert obj["key"] == info.key and obj["images"].shape == (6, 3, 32, 32)


def test_reordered_table_reuses_cache_and_follows_row_order(tmp_path: Path) -> None:
    df = _dataset(tmp_path)
    first, _, _ = load_tensors_info(tmp_path, 32)
    write_labels(tmp_path, df.iloc[::-1].reset_index(drop=True), {"kind": "test"})
    images, frame, info = load_tensors_info(tmp_path, 32)
    assert not info.rebuilt
    assert torch.equal(images, first.flip(0))
    assert frame["path"].iloc[0] == df["path"].iloc[-1]


def test_changed_image_or_rows_or_resolution_rebuilds(tmp_path: Path) -> None:
    df = _dataset(tmp_path)
    _, _, info0 = load_tensors_info(tmp_path, 32)
    # An image changes and the table records its new hash (what a re-import does).
    df.loc[2, "sha256"] = _write_image(tmp_path, df.loc[2, "path"], seed=1234)
    write_labels(tmp_path, df, {"kind": "test"})
    images, _, info = load_tensors_info(tmp_path, 32)
    assert info.rebuilt and info.reason == "stale" and info.key != info0.key
    assert torch.equal(images[2], _expected(tmp_path, df.loc[2, "path"], 32))
    # A row removed.
    write_labels(tmp_path, df.drop(index=4).reset_index(drop=True), {"kind": "test"})
    images, _, info = load_tensors_info(tmp_path, 32)
    assert info.rebuilt and images.shape[0] == 5
    # Another resolution: its own file, resized with Lanczos.
    small, _, info16 = load_tensors_info(tmp_path, 16)
    assert info16.rebuilt and info16.path.name == "tensors-r16.pt" and small.shape == (5, 3, 16, 16)
    assert torch.equal(small[0], _expected(tmp_path, df.loc[0, "path"], 16))
    assert not load_tensors_info(tmp_path, 32)[2].rebuilt


@pytest.mark.parametrize("damage", ["truncate", "garbage", "wrong_shape"])
def test_corrupt_cache_is_rebuilt(tmp_path: Path, damage: str) -> None:
    _dataset(tmp_path)
    good, _, info = load_tensors_info(tmp_path, 32)
    raw = info.path.read_bytes()
    if damage == "truncate":
        info.path.write_bytes(raw[: len(raw) // 2])
    elif damage == "garbage":
        info.path.write_bytes(b"not a torch file at all")
    else:
        torch.save({"key": info.key, "images": torch.zeros(2, 3, 8, 8, dtype=torch.uint8), "paths": []}, info.path)
    images, _, info2 = load_tensors_info(tmp_path, 32)
    assert info2.rebuilt and info2.reason == "corrupt"
    assert torch.equal(images, good)


def test_image_not_matching_its_hash_is_a_clear_error(tmp_path: Path) -> None:
    df = _dataset(tmp_path)
    _write_image(tmp_path, df.loc[1, "path"], seed=999)  # changed behind the table's back
    with pytest.raises(CacheError, match=r"images/01\.png: content changed"):
        load_tensors(tmp_path, 32)
    (tmp_path / df.loc[1, "path"]).unlink()
    with pytest.raises(CacheError, match=r"images/01\.png: image listed in labels.parquet is missing"):
        load_tensors(tmp_path, 32)
    assert not cache_path(tmp_path, 32).exists()  # a failed build leaves no cache behind


def test_custom_cache_dir(tmp_path: Path) -> None:
    _dataset(tmp_path / "ds")
    images, df = load_tensors(tmp_path / "ds", 32, cache_dir=tmp_path / "elsewhere")
    assert (tmp_path / "elsewhere" / "tensors-r32.pt").is_file() and len(df) == images.shape[0] == 6
    assert not (tmp_path / "ds" / ".cache").exists()

"""Fidelity over the changed region and the rest, and the source x target expression leak table."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.quality.leakage import leak_heatmap, leak_spread, leak_table
from pipeline.quality.regions import PSNR_CAP, changed_region, region_scores
from pipeline.quality.ssim import ssim, ssim_map
from pipeline.train.grids import to_uint8


def _face_pair(n: int = 2, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """A textured 'photo' and its truth with another expression: only a small mouth differs."""
    g = torch.Generator().manual_seed(0)
    source = torch.rand(n, 3, size, size, generator=g) * 1.6 - 0.8
    truth = source.clone()
    truth[:, :, 20:24, 12:20] = 0.9  # the mouth the expression changes
    return truth, source


def test_changed_region_is_where_truth_differs_from_source_plus_its_border() -> None:
    truth, source = _face_pair()
    where = changed_region(truth, source)
    assert where.shape == (2, 1, 32, 32)
    # The 4 x 8 changed pixels and their one-pixel border (6 x 10), nothing else.
    assert float(where[0].sum()) == 60 and float(where[0, 0, 20:24, 12:20].min()) == 1.0
    assert float(where[0, 0, :19].sum()) == 0 and float(where[0, 0, 25:].sum()) == 0
    assert float(changed_region(truth, source, dilate=0)[0].sum()) == 32
    faint = source.clone()
    faint[:, :, 0:4, 0:4] += 0.05  # below the threshold: not a change
    assert float(changed_region(faint, source).sum()) == 0


def test_ssim_map_averages_to_the_whole_image_ssim() -> None:
    truth, source = _face_pair(1)
    a, b = to_uint8(truth)[0], to_uint8(source)[0]
    assert np.nanmean(ssim_map(a, b, data_range=255)) == pytest.approx(ssim(a, b, data_range=255))


def test_truth_is_perfect_everywhere_and_the_copied_source_only_where_nothing_changed() -> None:
    truth, source = _face_pair()
    where = changed_region(truth, source)[:, 0].bool().numpy()
    truth_u8, source_u8 = to_uint8(truth), to_uint8(source)
    perfect = region_scores(truth_u8, truth_u8, where)
    for region in ("changed", "unchanged"):
        assert perfect[f"l1_{region}"] == pytest.approx([0, 0])
        assert perfect[f"psnr_{region}"] == pytest.approx([PSNR_CAP] * 2)
        assert perfect[f"ssim_{region}"] == pytest.approx([1, 1])
    copy = region_scores(source_u8, truth_u8, where)
    assert copy["l1_unchanged"] == pytest.approx([0, 0]) and copy["psnr_unchanged"] == pytest.approx([PSNR_CAP] * 2)
    # SSIM's window reaches a few pixels across the mouth's edge, so just under 1 there.
    assert (copy["ssim_unchanged"] > 0.9).all()
    assert (copy["l1_changed"] > 0.2).all() and (copy["psnr_changed"] < 15).all() and (copy["ssim_changed"] < 0.5).all()
    # A swap with nothing to change has no changed region: NaN there, not a perfect score.
    none = region_scores(truth_u8, truth_u8, np.zeros_like(where))
    assert np.isnan(none["l1_changed"]).all() and np.isnan(none["ssim_changed"]).all()


def test_leak_table_counts_land_in_their_source_target_cells() -> None:
    # Rows: source expression; columns: target expression. Neutral-source swaps to happy are all
    # right, happy-source swaps to neutral are half right (leakage), sad -> sad is never scored.
    source = np.array([0, 0, 0, 1, 1, 1, 1, 2])
    target = np.array([1, 1, 1, 0, 0, 0, 0, 1])
    correct = np.array([1, 1, 1, 1, 0, 1, 0, 0])
    acc, count = leak_table(source, target, correct, 7)
    assert acc.shape == count.shape == (7, 7) and count.sum() == 8
    assert count[0, 1] == 3 and acc[0, 1] == 1.0
    assert count[1, 0] == 4 and acc[1, 0] == 0.5
    assert count[2, 1] == 1 and acc[2, 1] == 0.0
    assert np.isnan(acc[2, 2]) and np.isnan(acc[1, 1])
    spread = leak_spread(acc)
    assert spread[1] == 1.0 and spread[0] == 0.0 and np.isnan(spread[3])  # happy: 1.0 from neutral, 0.0 from sad
    assert leak_heatmap(acc, ["a", "b", "c", "d", "e", "f", "g"]).axes

"""Identity consistency across a face's expressions: the figures novel identities are judged by."""

from __future__ import annotations

import pytest
import torch

from pipeline.quality.identity_consistency import identity_consistency


def _faces(n: int, k: int, noise: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n, 1, 32, generator=g)
    return centres + noise * torch.randn(n, k, 32, generator=g)


def test_distinct_faces_are_consistent_and_found() -> None:
    figs = identity_consistency(_faces(20, 7, 0.1))
    assert figs["same"] > 0.9 and abs(figs["other"]) < 0.2
    assert figs["top1"] == 1.0


def test_one_face_for_everyone_is_not_found() -> None:
    # Every render is the same face whatever its identity code: same == other, top-1 near chance.
    same_face = _faces(1, 1, 0.0).expand(20, 7, 32) + 0.05 * torch.randn(
        20, 7, 32, generator=torch.Generator().manual_seed(1)
    )
    figs = identity_consistency(same_face)
    assert figs["same"] == pytest.approx(figs["other"], abs=0.01)
    assert figs["top1"] < 0.3


def test_own_face_is_judged_without_the_render_itself() -> None:
    # Pure noise: with the render left in its own mean, top-1 would be near 1; left out, near chance.
    figs = identity_consistency(torch.randn(10, 7, 64, generator=torch.Generator().manual_seed(2)))
    assert figs["top1"] < 0.4


def test_too_few_faces_is_refused() -> None:
    with pytest.raises(ValueError, match="2 identities x 2 renders"):
        identity_consistency(torch.randn(1, 7, 8))

"""The judges: softened training copies teach them expressions, not sharpness; a panel votes by mean probability."""

from __future__ import annotations

import torch

from models import ExpressionClassifier, JudgePanel
from pipeline.judges import augment


def _fine_detail(x: torch.Tensor) -> torch.Tensor:
    """Per-image mean absolute difference between horizontal neighbours (high-frequency energy)."""
    return (x[..., 1:] - x[..., :-1]).abs().mean(dim=(1, 2, 3))


def _noise(n: int, size: int = 32) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0)) * 1.6 - 0.8


def test_soften_zero_keeps_fine_detail_and_one_softens_every_image() -> None:
    x = _noise(16)
    before = _fine_detail(x)
    kept = _fine_detail(augment(x, torch.Generator().manual_seed(1), soften=0.0))
    softened = _fine_detail(augment(x, torch.Generator().manual_seed(1), soften=1.0))
    # Shift and brightness/contrast jitter alone change the detail by the gain (<= 7.5%) at most.
    assert torch.all(kept > 0.9 * before)
    # Gaussian blur (sigma >= 0.4) or a resample through <= 7/8 of the size: a clear loss on noise.
    assert torch.all(softened < 0.75 * before)


def test_soften_share_picks_part_of_the_batch_reproducibly() -> None:
    x = _noise(64)
    before = _fine_detail(x)
    out = augment(x, torch.Generator().manual_seed(2), soften=0.5)
    softened = int((_fine_detail(out) < 0.75 * before).sum())
    assert 16 <= softened <= 48  # about half (binomial, n = 64)
    assert torch.equal(out, augment(x, torch.Generator().manual_seed(2), soften=0.5))
    assert out.shape == x.shape and out.min() >= -1 and out.max() <= 1


def test_a_panel_reads_as_one_classifier_whose_probabilities_are_the_members_mean() -> None:
    torch.manual_seed(0)
    members = [ExpressionClassifier(7, input_size=16, channels=4).eval() for _ in range(3)]
    panel = JudgePanel(members).eval()
    x = torch.rand(5, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        mean = torch.stack([torch.softmax(m(x), 1) for m in members]).mean(0)
        assert torch.allclose(torch.softmax(panel(x), 1), mean, atol=1e-6)
        # each member alone would vote otherwise on some image: the panel is not its first member
        assert not torch.allclose(torch.softmax(panel(x), 1), torch.softmax(members[0](x), 1))

"""The judges: softened training copies teach them expressions, not sharpness; a panel votes by mean probability;
the scoring judges train at their own batch and seed, not the GAN's."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import REPO

import pipeline.judges as judges
from models import ExpressionClassifier, JudgePanel
from pipeline.config import load_config
from pipeline.core.data import load_split
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


def test_scoring_judges_keep_their_batch_and_weights_whatever_the_gans_batch(
    tiny_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = ["train.judge_steps=2", "train.judge_panel=2"]
    tiny = REPO / "configs" / "tiny.yaml"
    stored = load_config(tiny, [*base, "train.batch_size=8"])
    own = load_config(tiny, [*base, "train.batch_size=8", "train.eval_judge_batch_size=32"])
    other_gan = load_config(tiny, [*base, "train.batch_size=4", "train.eval_judge_batch_size=32"])
    # A stored config without the field: its judges trained at twice the GAN's batch, as it says.
    assert judges.eval_judge_batch(stored) == 16 and judges.eval_judge_batch(own) == 32
    data = load_split(tiny_data, stored.model.max_resolution, "train")
    cpu = torch.device("cpu")
    torch.manual_seed(1)  # whatever the global generator holds, the same config gives the same judges
    caller = torch.get_rng_state()
    a = judges.train_eval_judges(own, data, cpu)
    assert torch.equal(torch.get_rng_state(), caller)  # and the caller's generator is left as it was
    torch.manual_seed(2)
    b = judges.train_eval_judges(other_gan, data, cpu)
    for k, v in a["classifier"].items():
        assert torch.equal(v, b["classifier"][k]), k
    batches: list[int] = []
    real_train = judges.train_judges
    monkeypatch.setattr(judges, "train_judges", lambda *args, **kw: batches.append(args[4]) or real_train(*args, **kw))
    caller = torch.get_rng_state()
    judges.train_panel_members(own, data, cpu, 2)
    assert batches == [32] and torch.equal(torch.get_rng_state(), caller)

"""Expression scores and SSIM/PSNR helpers (small synthetic inputs, no weights)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data
from skimage.metrics import structural_similarity

from pipeline.quality.expression import expression_scores
from pipeline.quality.ssim import auto_win_size, psnr, psnr_batch, ssim, ssim_batch


class _FixedLogits(torch.nn.Module):
    """Returns preset logits per image (the image's first pixel indexes the row)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.min() >= -1 and x.max() <= 1  # classifier sees the [-1, 1] convention
        idx = ((x[:, 0, 0, 0] + 1) * 127.5).round().long()
        return self.logits[idx]


def test_expression_scores() -> None:
    logits = torch.tensor(
        [
            [5.0, 0.0, 0.0],  # confident class 0
            [0.2, 0.0, 0.1],  # argmax 0 but p ~ 0.37
            [0.0, 4.0, 0.0],  # class 1
            [float("nan"), 0.0, 0.0],  # broken output
        ]
    )
    model = _FixedLogits(logits)
    imgs = torch.zeros(4, 3, 4, 4, dtype=torch.uint8)
    imgs[:, 0, 0, 0] = torch.arange(4, dtype=torch.uint8)
    pred, p, passed = expression_scores(model, imgs, [0, 0, 0, 0], threshold=0.5, batch_size=3, device="cpu")
    assert pred.tolist() == [0, 0, 1, -1]
    assert p[0] == pytest.approx(torch.softmax(logits[0], 0)[0].item())
    assert np.isnan(p[3])
    assert passed.tolist() == [True, False, False, False]
    with pytest.raises(ValueError, match="target labels"):
        expression_scores(model, imgs, [0, 1], device="cpu")
    with pytest.raises(ValueError, match="out of range"):
        expression_scores(model, imgs, [0, 0, 0, 3], device="cpu")


def test_ssim_conventions_match_skimage() -> None:
    img = data.astronaut()[::4, ::4]  # 128x128x3 uint8
    rng = np.random.default_rng(0)
    noisy = np.clip(img + rng.normal(0, 10, img.shape), 0, 255).astype(np.uint8)
    ref = structural_similarity(
        img, noisy, data_range=255, channel_axis=-1, gaussian_weights=True, sigma=1.5,
        use_sample_covariance=False,
    )  # fmt: skip
    assert ssim(img, noisy) == pytest.approx(ref)
    assert ssim(img, img) == pytest.approx(1.0)
    # float [0, 1] uses data_range 1 and agrees with the uint8 result
    assert ssim(img / 255.0, noisy / 255.0) == pytest.approx(ref, abs=1e-6)
    assert 20 < psnr(img, noisy) < 40 and psnr(img, img) == float("inf")
    with pytest.raises(ValueError, match=r"\(128, 128, 3\) vs \(64, 64, 3\)"):
        ssim(img, img[::2, ::2])
    with pytest.raises(ValueError, match="data_range"):
        ssim(img / 127.5 - 1, noisy / 127.5 - 1)


def test_ssim_window_and_batches() -> None:
    assert auto_win_size(64, 64) == 11 and auto_win_size(8, 8) == 7 and auto_win_size(6, 9) == 5
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)  # tiny renders still work
    b = a.copy()
    b[1] = 255 - b[1]
    s = ssim_batch(a, b)
    assert s.shape == (3,) and s[0] == pytest.approx(1.0) and s[1] < 0.5
    nchw = torch.from_numpy(a).permute(0, 3, 1, 2)
    assert np.allclose(ssim_batch(nchw, torch.from_numpy(b).permute(0, 3, 1, 2), channels_first=True), s)
    assert psnr_batch(a, b)[0] == float("inf")
    grey = rng.random((2, 16, 16))
    assert ssim_batch(grey, grey).tolist() == pytest.approx([1.0, 1.0])
    with pytest.raises(ValueError, match="batch shapes differ"):
        ssim_batch(a, b[:2])
    with pytest.raises(ValueError, match="too small"):
        ssim(a[0, :2, :2], b[0, :2, :2])

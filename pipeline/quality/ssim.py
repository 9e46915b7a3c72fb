"""SSIM and PSNR (scikit-image) with the settings fixed once, over single images or batches.

Wang et al. (2004) setting: Gaussian window sigma 1.5, population covariance. With
`gaussian_weights=True` scikit-image always filters with an 11-tap Gaussian (truncate 3.5) and uses
`win_size` only to crop the border before averaging; so the window is 11 (skimage's own default in
this mode, and Wang's 11x11) where the image allows, else the largest odd size that fits (renders
of 4-8 px), which only shrinks the cropped border.
Images are HW or HWC (channel last); batches are (N, H, W) or (N, H, W, C), or NCHW with
`channels_first=True`. uint8 uses data_range 255, float must lie in [0, 1] and uses 1.0.
"""

from __future__ import annotations

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

DEFAULT_WIN = 11  # = 2 * int(3.5 * 1.5 + 0.5) + 1, the Gaussian filter's support


def _as_numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def auto_win_size(height: int, width: int, preferred: int = DEFAULT_WIN) -> int:
    """Odd window no larger than the smaller side: 11 if it fits, else the largest odd <= side."""
    side = min(height, width)
    if side < 1:
        raise ValueError(f"image side must be >= 1, got {height}x{width}")
    if side >= preferred:
        return preferred
    return side if side % 2 == 1 else side - 1


def infer_data_range(a: np.ndarray, b: np.ndarray) -> float:
    """255 for uint8; 1.0 for float images in [0, 1]; anything else needs an explicit data_range."""
    if a.dtype != b.dtype:
        raise TypeError(f"images must share a dtype, got {a.dtype} and {b.dtype}")
    if a.dtype == np.uint8:
        return 255.0
    if np.issubdtype(a.dtype, np.floating):
        lo, hi = min(a.min(), b.min()), max(a.max(), b.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(
                f"float images must lie in [0, 1] for the default data_range, got [{lo:.3f}, {hi:.3f}]; "
                "rescale them or pass data_range"
            )
        return 1.0
    raise TypeError(f"expected uint8 or float images, got {a.dtype}")


def _check_pair(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {a.shape} vs {b.shape}")
    if a.ndim not in (2, 3):
        raise ValueError(f"expected one HW or HWC image, got shape {a.shape}")


def _structural_similarity(
    a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor, data_range: float | None, win_size: int | None
) -> tuple[float, np.ndarray, int]:
    """skimage's SSIM with the fixed settings: (mean, per-pixel map HW or HWC, window)."""
    a, b = _as_numpy(a), _as_numpy(b)
    _check_pair(a, b)
    dr = infer_data_range(a, b) if data_range is None else float(data_range)
    win = auto_win_size(a.shape[0], a.shape[1]) if win_size is None else win_size
    if win % 2 == 0 or win > min(a.shape[:2]):
        raise ValueError(f"win_size must be odd and <= the smaller image side {min(a.shape[:2])}, got {win}")
    if win < 3:
        # A 1-px window has no structure term; SSIM is undefined for such tiny images.
        raise ValueError(f"images of {a.shape[0]}x{a.shape[1]} are too small for SSIM (need a side >= 3)")
    mean, full = structural_similarity(
        a,
        b,
        data_range=dr,
        channel_axis=-1 if a.ndim == 3 else None,
        win_size=win,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        full=True,
    )
    return float(mean), full, win


def ssim(
    a: np.ndarray | torch.Tensor,
    b: np.ndarray | torch.Tensor,
    data_range: float | None = None,
    win_size: int | None = None,
) -> float:
    """SSIM of one HW/HWC image pair (Wang et al. settings)."""
    return _structural_similarity(a, b, data_range, win_size)[0]


def ssim_map(
    a: np.ndarray | torch.Tensor,
    b: np.ndarray | torch.Tensor,
    data_range: float | None = None,
    win_size: int | None = None,
) -> np.ndarray:
    """Per-pixel SSIM (HW, the channels' mean) of one image pair, NaN on the border `ssim` leaves out.

    scikit-image averages its SSIM map without a border of (window - 1) // 2 pixels, where the
    filters reach past the image; that border is NaN here, so `np.nanmean` of the map is `ssim`, and
    the mean over any region (the pixels an expression changes) uses the same pixels `ssim` would.
    """
    _, full, win = _structural_similarity(a, b, data_range, win_size)
    out = full.mean(-1) if full.ndim == 3 else full.astype(np.float64)
    pad = (win - 1) // 2
    border = np.ones(out.shape, bool)
    border[pad : out.shape[0] - pad, pad : out.shape[1] - pad] = False
    out[border] = np.nan
    return out


def psnr(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor, data_range: float | None = None) -> float:
    """PSNR in dB of one image pair; +inf for identical images."""
    a, b = _as_numpy(a), _as_numpy(b)
    _check_pair(a, b)
    dr = infer_data_range(a, b) if data_range is None else float(data_range)
    if np.array_equal(a, b):
        return float("inf")  # skimage divides by a zero MSE and warns
    return float(peak_signal_noise_ratio(a, b, data_range=dr))


def _batch_pair(
    a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor, channels_first: bool
) -> tuple[np.ndarray, np.ndarray]:
    a, b = _as_numpy(a), _as_numpy(b)
    if a.shape != b.shape:
        raise ValueError(f"batch shapes differ: {a.shape} vs {b.shape}")
    if a.ndim not in (3, 4):
        raise ValueError(f"expected a batch (N,H,W) or (N,H,W,C), got shape {a.shape}")
    if a.shape[0] == 0:
        raise ValueError("empty batch")
    if channels_first and a.ndim == 4:
        a, b = a.transpose(0, 2, 3, 1), b.transpose(0, 2, 3, 1)
    return a, b


def ssim_batch(
    a: np.ndarray | torch.Tensor,
    b: np.ndarray | torch.Tensor,
    data_range: float | None = None,
    win_size: int | None = None,
    channels_first: bool = False,
) -> np.ndarray:
    """SSIM per image pair of two equal-shape batches, as a float64 (N,) array."""
    a, b = _batch_pair(a, b, channels_first)
    dr = infer_data_range(a, b) if data_range is None else float(data_range)
    return np.array([ssim(x, y, data_range=dr, win_size=win_size) for x, y in zip(a, b, strict=True)])


def psnr_batch(
    a: np.ndarray | torch.Tensor,
    b: np.ndarray | torch.Tensor,
    data_range: float | None = None,
    channels_first: bool = False,
) -> np.ndarray:
    """PSNR (dB) per image pair, as a float64 (N,) array."""
    a, b = _batch_pair(a, b, channels_first)
    dr = infer_data_range(a, b) if data_range is None else float(data_range)
    return np.array([psnr(x, y, data_range=dr) for x, y in zip(a, b, strict=True)])

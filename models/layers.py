"""Building blocks shared by the GAN parts: equalised-LR layers, normalisations and code injection.

Equalised learning rate (Karras et al., ProGAN): parameters are stored as N(0, 1) and multiplied at run
time by the He constant ``gain / sqrt(fan_in)``. Adam's update size is then the same for every layer,
whatever its fan-in, which is what keeps progressive growing stable. ``lr_mul`` (StyleGAN) further
scales both the stored-parameter init (by ``1 / lr_mul``) and the runtime multiplier (by ``lr_mul``):
the forward pass is unchanged at init but the layer learns ``lr_mul`` times slower.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# ProGAN uses the He gain sqrt(2) (for LeakyReLU/ReLU layers) everywhere except the layers that emit
# images or logits, which use gain 1.
HE_GAIN = math.sqrt(2.0)


class EqualLinear(nn.Module):
    """Fully connected layer with equalised learning rate.

    Runtime weight = ``weight * scale`` with ``scale = gain * lr_mul / sqrt(in_features)``; runtime
    bias = ``bias * lr_mul`` (stored as ``bias_init / lr_mul`` so it starts at ``bias_init``).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        bias_init: float = 0.0,
        lr_mul: float = 1.0,
        gain: float = HE_GAIN,
    ) -> None:
        super().__init__()
        if lr_mul <= 0:
            raise ValueError(f"lr_mul must be > 0, got {lr_mul}")
        self.in_features = in_features
        self.out_features = out_features
        self.lr_mul = lr_mul
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_features,), bias_init / lr_mul)) if bias else None
        self.scale = gain * lr_mul / math.sqrt(in_features)

    def forward(self, x: Tensor) -> Tensor:
        bias = self.bias * self.lr_mul if self.bias is not None else None
        return F.linear(x, self.weight * self.scale, bias)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, scale={self.scale:.4g}, lr_mul={self.lr_mul}"


class EqualConv2d(nn.Module):
    """2-D convolution with equalised learning rate (fan_in = in_channels * k * k)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        bias: bool = True,
        gain: float = HE_GAIN,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride
        self.padding = padding
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.scale = gain / math.sqrt(in_channels * kernel_size * kernel_size)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, stride=self.stride, padding=self.padding)

    def extra_repr(self) -> str:
        k = self.weight.shape[-1]
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={k}, stride={self.stride}, "
            f"padding={self.padding}, scale={self.scale:.4g}"
        )


class PixelNorm(nn.Module):
    """Normalise every feature vector (over dim 1) to unit RMS; stops magnitude escalation (ProGAN)."""

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return pixel_norm(x, self.eps)


def pixel_norm(x: Tensor, eps: float = 1e-8) -> Tensor:
    """Every vector (over dim 1) scaled to unit RMS, i.e. onto the sphere of radius sqrt(dim)."""
    return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + eps)


class MinibatchStdDev(nn.Module):
    """Append the mean per-group feature std as one extra channel (ProGAN), so D can see diversity.

    The group is the largest divisor of the batch size that is <= ``group_size``; if that divisor is 1
    while the batch has more than one sample (a prime batch such as 5 or 7), the whole batch is one
    group instead, so the feature still measures diversity. A batch of 1 gets a constant (~0) channel.
    """

    def __init__(self, group_size: int = 4, eps: float = 1e-8) -> None:
        super().__init__()
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        self.group_size = group_size
        self.eps = eps

    def _group(self, n: int) -> int:
        g = next(d for d in range(min(self.group_size, n), 0, -1) if n % d == 0)
        return n if g == 1 and n > 1 else g

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        g = self._group(n)
        y = x.reshape(g, n // g, c, h, w)  # sample i belongs to group i % (n // g), as in ProGAN
        y = (y.var(dim=0, unbiased=False) + self.eps).sqrt()  # (n//g, c, h, w)
        y = y.mean(dim=(1, 2, 3))  # one scalar per group
        y = y.repeat(g).reshape(n, 1, 1, 1).expand(n, 1, h, w)
        return torch.cat([x, y], dim=1)


class AdaIN(nn.Module):
    """Adaptive instance normalisation: the conditioning code sets every channel's scale and offset.

    This is how StyleGAN/StyleALAE inject the latent into every synthesis layer: instance norm wipes
    each channel's statistics and the code writes new ones, so the code cannot be ignored at any
    resolution. The scale is ``1 + affine(w)`` (bias initialised so the layer starts near identity).
    """

    def __init__(self, channels: int, w_dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.to_scale = EqualLinear(w_dim, channels, bias_init=1.0, gain=1.0)
        self.to_shift = EqualLinear(w_dim, channels, bias_init=0.0, gain=1.0)

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        mean = x.mean(dim=(2, 3), keepdim=True)
        var = x.var(dim=(2, 3), keepdim=True, unbiased=False)
        x = (x - mean) * torch.rsqrt(var + self.eps)
        return x * self.to_scale(w)[:, :, None, None] + self.to_shift(w)[:, :, None, None]


def resize_square(x: Tensor, size: int) -> Tensor:
    """Resize NCHW images to ``size`` x ``size`` (bilinear; antialiased when shrinking)."""
    if x.dim() != 4:
        raise ValueError(f"expected an NCHW image batch, got shape {tuple(x.shape)}")
    if x.shape[-2:] == (size, size):
        return x
    shrinking = x.shape[-1] > size or x.shape[-2] > size
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=shrinking)


def check_images(x: Tensor, name: str = "x") -> None:
    """Fail early, naming the shape, on anything that is not an (N, 3, H, W) batch."""
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"{name} must be an (N, 3, H, W) RGB batch, got shape {tuple(x.shape)}")


def check_resolution(resolution: int, resolutions: list[int]) -> int:
    """Return the stage index of ``resolution`` (4 -> 0, 8 -> 1, ...) or raise ValueError."""
    if resolution not in resolutions:
        raise ValueError(f"resolution {resolution!r} is not supported; expected one of {resolutions}")
    return resolutions.index(resolution)


def check_alpha(alpha: float) -> float:
    """Fade-in weight must lie in [0, 1]; anything else is a scheduling bug upstream."""
    a = float(alpha)
    if not 0.0 <= a <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    return a


def progressive_resolutions(max_resolution: int) -> list[int]:
    """4, 8, ..., max_resolution; max_resolution must be a power of two >= 4."""
    if max_resolution < 4 or max_resolution & (max_resolution - 1):
        raise ValueError(f"max_resolution must be a power of two >= 4, got {max_resolution}")
    return [2**k for k in range(2, int(math.log2(max_resolution)) + 1)]


def progressive_channels(resolution: int, channels: int, min_channels: int) -> int:
    """``channels`` up to 16x16, then halved per doubling, never below ``min_channels``."""
    halvings = max(0, int(math.log2(resolution)) - 4)
    return max(min_channels, channels >> halvings)


class DownBlock(nn.Module):
    """conv3x3 -> LReLU -> conv3x3 -> LReLU -> avgpool 2x2 (the discriminator's and the photo path's step down)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = EqualConv2d(in_channels, in_channels, 3, padding=1)
        self.conv2 = EqualConv2d(in_channels, out_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.leaky_relu(self.conv1(x), 0.2)
        x = F.leaky_relu(self.conv2(x), 0.2)
        return F.avg_pool2d(x, 2)

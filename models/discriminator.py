"""Progressive discriminator with an auxiliary expression classifier (ProGAN + AC-GAN heads).

Mirrors the generator: a fromRGB 1x1 conv at every resolution, one block per halving (conv3x3,
conv3x3, 2x2 average pool), fade-in of the newest block against the 2x-downsampled image fed through
the previous fromRGB, and a final 4x4 block with minibatch standard deviation. Two linear heads share
the trunk: realness (for the adversarial loss) and expression class (the auxiliary classifier).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.layers import (
    DownBlock,
    EqualConv2d,
    EqualLinear,
    MinibatchStdDev,
    check_alpha,
    check_images,
    check_resolution,
    progressive_channels,
    progressive_resolutions,
)


class Discriminator(nn.Module):
    """Image -> (realness logits (N,), expression logits (N, num_classes)).

    Args:
        max_resolution: largest input size (power of two >= 4); inputs are 4..max_resolution.
        channels, min_channels: channel schedule, the same rule as the generator's.
        num_classes: expression classes for the auxiliary head.
    """

    def __init__(
        self,
        max_resolution: int = 64,
        channels: int = 256,
        min_channels: int = 32,
        num_classes: int = 7,
        mbstd_group_size: int = 4,
    ) -> None:
        super().__init__()
        self.max_resolution = max_resolution
        self.num_classes = num_classes
        self._resolutions = progressive_resolutions(max_resolution)
        chans = [progressive_channels(r, channels, min_channels) for r in self._resolutions]
        self.channels = chans
        self.from_rgb = nn.ModuleList(EqualConv2d(3, c, 1) for c in chans)
        # blocks[i] takes resolutions[i + 1] features down to resolutions[i].
        self.blocks = nn.ModuleList(DownBlock(chans[i + 1], chans[i]) for i in range(len(chans) - 1))
        c0 = chans[0]
        self.mbstd = MinibatchStdDev(mbstd_group_size)
        self.final_conv = EqualConv2d(c0 + 1, c0, 3, padding=1)
        self.final_dense = EqualLinear(c0 * 16, c0)
        self.adv_head = EqualLinear(c0, 1, gain=1.0)
        self.cls_head = EqualLinear(c0, num_classes, gain=1.0)

    @property
    def resolutions(self) -> list[int]:
        """Supported input resolutions, ascending (4, 8, ..., max_resolution)."""
        return list(self._resolutions)

    def forward(self, img: Tensor, resolution: int, alpha: float = 1.0) -> tuple[Tensor, Tensor]:
        """Score a (N, 3, resolution, resolution) batch; ``alpha < 1`` fades in the newest block."""
        stage = check_resolution(resolution, self._resolutions)
        alpha = check_alpha(alpha)
        check_images(img, "img")
        if img.shape[-2:] != (resolution, resolution):
            raise ValueError(f"img is {tuple(img.shape[-2:])} but resolution is {resolution}")
        x = F.leaky_relu(self.from_rgb[stage](img), 0.2)
        if stage > 0 and alpha < 1.0:
            x = self.blocks[stage - 1](x)
            skip = F.leaky_relu(self.from_rgb[stage - 1](F.avg_pool2d(img, 2)), 0.2)
            x = torch.lerp(skip, x, alpha)
            stage -= 1
        for i in range(stage - 1, -1, -1):
            x = self.blocks[i](x)
        x = self.mbstd(x)
        x = F.leaky_relu(self.final_conv(x), 0.2)
        x = F.leaky_relu(self.final_dense(x.flatten(1)), 0.2)
        return self.adv_head(x).squeeze(1), self.cls_head(x)

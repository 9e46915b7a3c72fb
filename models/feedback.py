"""Feedback network: generated image -> (w_id, w_exp).

Recovering the identity code from a render with a swapped expression code (and vice versa) is the
loss that forces the two codes apart, so this net runs on every generated batch: it is kept small
(a stride-2 stem straight to half resolution, three residual down blocks, ~1.8M params at 64 ch).
No batch norm: its statistics would differ between real, reconstructed and swapped batches.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from models.layers import check_images, resize_square


class _ResDown(nn.Module):
    """Pre-pool residual block: (conv3x3, LReLU, conv3x3, LReLU, avgpool) + (avgpool, 1x1), / sqrt 2."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, in_channels, 3, padding=1)
        self.conv2 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        h = F.leaky_relu(self.conv1(x), 0.2)
        h = F.avg_pool2d(F.leaky_relu(self.conv2(h), 0.2), 2)
        # Dividing by sqrt(2) keeps the residual sum's variance from growing without a norm layer.
        return (h + self.skip(F.avg_pool2d(x, 2))) / math.sqrt(2.0)


class FeedbackNetwork(nn.Module):
    """Image in [-1, 1] (any size, resized to ``input_size``) -> (w_id (N, id_dim), w_exp (N, exp_dim)).

    The trunk halves the image four times and flattens the (at most 4x4) map, so spatial layout (where
    the mouth is) reaches the heads. It works at ``max(input_size, 16)`` because 16 px is the least
    that survives four halvings; ``input_size`` must be a power of two.
    """

    def __init__(self, id_dim: int = 128, exp_dim: int = 32, input_size: int = 64, channels: int = 64) -> None:
        super().__init__()
        if input_size < 1 or input_size & (input_size - 1):
            raise ValueError(f"input_size must be a power of two, got {input_size}")
        self.input_size = max(input_size, 16)
        c = channels
        self.stem = nn.Conv2d(3, c, 3, stride=2, padding=1)
        self.blocks = nn.Sequential(_ResDown(c, c), _ResDown(c, 2 * c), _ResDown(2 * c, 4 * c))
        side = self.input_size // 16
        # Pool anything bigger than 4x4 down to 4x4 so the head size does not grow with input_size.
        self.pool = nn.AdaptiveAvgPool2d(min(side, 4))
        flat = 4 * c * min(side, 4) ** 2
        hidden = 4 * c
        self.trunk = nn.Sequential(nn.Flatten(), nn.Linear(flat, hidden), nn.LeakyReLU(0.2))
        self.id_head = nn.Linear(hidden, id_dim)
        self.exp_head = nn.Linear(hidden, exp_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        check_images(x)
        x = resize_square(x, self.input_size)
        h = F.leaky_relu(self.stem(x), 0.2)
        h = self.trunk(self.pool(self.blocks(h)))
        return self.id_head(h), self.exp_head(h)

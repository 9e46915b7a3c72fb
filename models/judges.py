"""Judges trained on the real training split: an expression classifier and an identity embedder.

They serve twice: as frozen losses during GAN training (expression of swapped renders, identity
preservation) and as independent judges in evaluation. Plain compact CNNs with batch norm (they are
not adversarial, so BN's batch coupling is harmless; use them in eval mode when judging).
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from models.layers import check_images, resize_square


def _conv_bn(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class _JudgeTrunk(nn.Module):
    """Four VGG-style stages (2 x conv-BN-ReLU, max-pool) with c, 2c, 4c, 8c channels -> flat vector.

    The final map is pooled to 4x4 and flattened rather than globally averaged: faces are aligned,
    so where a feature is (mouth corner vs. brow) is itself informative. Inputs are resized to
    ``max(input_size, 16)``: 16 px is the least that survives the four pools.
    """

    def __init__(self, input_size: int, channels: int) -> None:
        super().__init__()
        if input_size < 1:
            raise ValueError(f"input_size must be >= 1, got {input_size}")
        self.input_size = max(input_size, 16)
        chans = [3, channels, 2 * channels, 4 * channels, 8 * channels]
        layers: list[nn.Module] = []
        for cin, cout in itertools.pairwise(chans):
            layers += [*_conv_bn(cin, cout), *_conv_bn(cout, cout), nn.MaxPool2d(2)]
        layers += [nn.AdaptiveAvgPool2d(4), nn.Flatten()]
        self.net = nn.Sequential(*layers)
        self.out_dim = 8 * channels * 16

    def forward(self, x: Tensor) -> Tensor:
        check_images(x)
        return self.net(resize_square(x, self.input_size))


class ExpressionClassifier(nn.Module):
    """Image in [-1, 1] -> expression logits (N, num_classes)."""

    def __init__(self, num_classes: int = 7, input_size: int = 64, channels: int = 32, dropout: float = 0.2) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.trunk = _JudgeTrunk(input_size, channels)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.trunk.out_dim, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.trunk(x))


class JudgePanel(nn.Module):
    """Independently seeded expression classifiers judging together by their mean probability.

    ``forward`` returns the log of the mean probability, so a softmax of it is the panel's mean and
    its argmax the panel's verdict: anything that reads a classifier's logits reads a panel alike.
    """

    def __init__(self, members: list[ExpressionClassifier]) -> None:
        super().__init__()
        if not members:
            raise ValueError("a judge panel needs at least one member")
        self.members = nn.ModuleList(members)
        self.num_classes = members[0].num_classes

    def forward(self, x: Tensor) -> Tensor:
        p = torch.stack([torch.softmax(m(x).float(), 1) for m in self.members]).mean(0)
        return p.clamp_min(1e-12).log()


class IdentityEmbedder(nn.Module):
    """Image in [-1, 1] -> unit-norm identity embedding; trained as a cosine classifier.

    ``forward`` gives ``scale * cos(embedding, class_weight)`` (NormFace). When ``labels`` are passed
    the target logit becomes ``scale * (cos - margin)`` (CosFace), which tightens identity clusters;
    leave labels out for plain logits (evaluation, accuracy).

    Args:
        num_identities: classes seen in training (only the training head depends on it).
        embed_dim: embedding size.
        scale, margin: CosFace ``s`` and ``m`` defaults.
    """

    def __init__(
        self,
        num_identities: int,
        embed_dim: int = 128,
        input_size: int = 64,
        channels: int = 32,
        scale: float = 20.0,
        margin: float = 0.2,
    ) -> None:
        super().__init__()
        if num_identities < 1:
            raise ValueError(f"num_identities must be >= 1, got {num_identities}")
        self.num_identities = num_identities
        self.embed_dim = embed_dim
        self.scale = scale
        self.margin = margin
        self.trunk = _JudgeTrunk(input_size, channels)
        # BN on the embedding (as in FaceNet/ArcFace heads) keeps the direction well spread at init.
        self.neck = nn.Sequential(nn.Linear(self.trunk.out_dim, embed_dim, bias=False), nn.BatchNorm1d(embed_dim))
        self.class_weight = nn.Parameter(torch.randn(num_identities, embed_dim) / embed_dim**0.5)

    def embed(self, x: Tensor) -> Tensor:
        """L2-normalised embeddings (N, embed_dim)."""
        return F.normalize(self.neck(self.trunk(x)), dim=1)

    def forward(self, x: Tensor, labels: Tensor | None = None, margin: float | None = None) -> Tensor:
        """Scaled-cosine identity logits (N, num_identities); CosFace margin on the target when labelled."""
        cos = self.embed(x) @ F.normalize(self.class_weight, dim=1).t()
        if labels is not None:
            m = self.margin if margin is None else margin
            if m:
                cos = cos - m * F.one_hot(labels, self.num_identities).to(cos.dtype)
        return self.scale * cos


class OutsideExpressionJudge(nn.Module):
    """Image in [-1, 1] -> expression logits, by torchvision's ShuffleNet V2 (x1.0), trained from scratch.

    An architecture of another family than every judge a training loss uses (the VGG-style trunk
    above): depthwise-separable convolutions with channel shuffle and no max-pooled conv stacks. A
    render optimised against the trunk family has no reason to fool this one. The input is upsampled
    ``upscale`` times first so that ShuffleNet's 32x reduction still leaves a spatial map (4x4 at 64 px).
    """

    def __init__(self, num_classes: int = 7, upscale: int = 2) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.upscale = upscale
        self.net = torchvision.models.shufflenet_v2_x1_0(weights=None, num_classes=num_classes)

    def forward(self, x: Tensor) -> Tensor:
        check_images(x)
        if self.upscale != 1:
            x = F.interpolate(x, scale_factor=self.upscale, mode="bilinear", align_corners=False)
        return self.net(x)

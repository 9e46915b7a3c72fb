"""Encoder: backbone features -> mapping network -> (w_id, w_exp).

The paper uses a ResNet50 (ImageNet-initialised) for the initial features of an aligned face; an MLP
mapping network turns them into the two codes through two linear heads on a shared trunk. The heads
are linear (no activation) so the codes are unconstrained: the pipeline averages, interpolates and
fits Gaussians to them.

Optionally (``spatial_channels > 0``) the identity code also carries a small spatial map taken from
the backbone where its features are ``spatial_resolution`` pixels wide (1x1 conv, flattened and
appended to the identity vector). A vector code has to squeeze where the hairline, glasses, pose and
background sit through an MLP; a map keeps them in place. Measured on the procedural data at 32 px
(encoder + generator only, 300 steps, test identities): swap SSIM to the true image 0.64 with the
vector code, 0.71 with an 8x8x8 map, 0.75+ with a 16x16x4 map. The expression code stays a vector.

No weights are downloaded here: ``backbone_state`` is a torchvision state_dict handed in by the
pipeline (its ``fc.*`` keys are ignored because the classifier is removed).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from models.layers import EqualLinear, PixelNorm, check_images, identity_code_width, resize_square

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class MappingNetwork(nn.Module):
    """PixelNorm -> ``num_layers`` x (EqualLinear + LeakyReLU) trunk -> linear w_id and w_exp heads.

    PixelNorm on the input puts backbone features of any magnitude on a common scale. ``lr_mul``
    slows the MLP relative to the rest (StyleGAN uses 0.01 for a z-mapping; StyleALAE uses 0.1 for
    its encoder-side mapping, which suits an encoder trained jointly with the generator).
    """

    def __init__(
        self,
        in_dim: int,
        id_dim: int = 128,
        exp_dim: int = 32,
        num_layers: int = 4,
        hidden_dim: int = 512,
        lr_mul: float = 0.1,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.norm = PixelNorm()
        dims = [in_dim] + [hidden_dim] * num_layers
        self.trunk = nn.ModuleList(EqualLinear(dims[i], dims[i + 1], lr_mul=lr_mul) for i in range(num_layers))
        # Gain 1: the heads emit codes, not pre-activations.
        self.id_head = EqualLinear(hidden_dim, id_dim, lr_mul=lr_mul, gain=1.0)
        self.exp_head = EqualLinear(hidden_dim, exp_dim, lr_mul=lr_mul, gain=1.0)

    def forward(self, feats: Tensor) -> tuple[Tensor, Tensor]:
        h = self.norm(feats)
        for layer in self.trunk:
            h = F.leaky_relu(layer(h), 0.2)
        return self.id_head(h), self.exp_head(h)


def _small_backbone() -> nn.Sequential:
    """Light CPU backbone: four stride-2 conv3x3-BN-ReLU blocks (32-64-128-256 ch) -> 4x4 map, flattened.

    The 4x4 map is flattened, not averaged: where the eyes, mouth and hairline sit is what the
    generator must rebuild, and a global average throws that layout away (measured on the procedural
    data at 32 px: test SSIM 0.44 vs 0.42 after 300 steps, the gap growing with training).
    """
    layers: list[nn.Module] = []
    chans = [3, 32, 64, 128, 256]
    for cin, cout in itertools.pairwise(chans):
        layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)]
    layers += [nn.AdaptiveAvgPool2d(4), nn.Flatten()]
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """Image in [-1, 1] (any size, resized to ``input_size``) -> (w_id (N, id_dim), w_exp (N, exp_dim)).

    Args:
        backbone: "resnet50" (2048-d), "resnet18" (512-d) or "small" (4096-d, ~0.4M params, for CPU).
        id_dim, exp_dim: code sizes.
        mapping_layers: depth of the mapping MLP trunk.
        input_size: side the input is resized to before the backbone.
        backbone_state: optional state_dict for the backbone (e.g. torchvision ImageNet weights).
        mapping_hidden, mapping_lr_mul: width and learning-rate multiplier of the mapping MLP.
        spatial_channels, spatial_resolution: the optional spatial part of the identity code; then
            ``id_dim`` (the attribute) is the whole code width, ``id_vector_dim`` the vector's.
    """

    def __init__(
        self,
        backbone: str = "resnet50",
        id_dim: int = 128,
        exp_dim: int = 32,
        mapping_layers: int = 4,
        input_size: int = 64,
        backbone_state: Mapping[str, Tensor] | None = None,
        mapping_hidden: int = 512,
        mapping_lr_mul: float = 0.1,
        spatial_channels: int = 0,
        spatial_resolution: int = 16,
    ) -> None:
        super().__init__()
        self.backbone_name = backbone
        self.input_size = input_size
        self.id_vector_dim = id_dim
        self.spatial_channels = spatial_channels
        self.spatial_resolution = spatial_resolution
        # w_id is the vector followed by the flattened spatial map (when there is one).
        self.id_dim = identity_code_width(id_dim, spatial_channels, spatial_resolution)
        self.exp_dim = exp_dim
        if backbone in ("resnet50", "resnet18"):
            net = getattr(torchvision.models, backbone)(weights=None)
            self.feature_dim: int = net.fc.in_features
            net.fc = nn.Identity()
            self.imagenet_norm = True
        elif backbone == "small":
            net = _small_backbone()
            self.feature_dim = 256 * 16
            self.imagenet_norm = False
        else:
            raise ValueError(f"unknown backbone {backbone!r}; expected 'resnet50', 'resnet18' or 'small'")
        self.backbone = net
        if backbone_state is not None:
            self.load_backbone_state(backbone_state)
        # Not persistent: constants, so checkpoints hold only learned state.
        self.register_buffer("_mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.mapping = MappingNetwork(
            self.feature_dim, id_dim, exp_dim, mapping_layers, hidden_dim=mapping_hidden, lr_mul=mapping_lr_mul
        )
        self.spatial_head: nn.Conv2d | None = None
        if spatial_channels:
            if not 1 <= spatial_resolution < input_size:
                raise ValueError(f"spatial_resolution must be below input_size {input_size}, got {spatial_resolution}")
            in_ch = self._channels_at(spatial_resolution)
            self.spatial_head = nn.Conv2d(in_ch, spatial_channels, 1)

    def load_backbone_state(self, state: Mapping[str, Tensor]) -> None:
        """Load backbone weights strictly, ignoring the removed classifier (``fc.*``).

        Raises ValueError naming the missing/unexpected keys, so a wrong weights file (another
        architecture) fails loudly instead of leaving a silently random backbone.
        """
        filtered = {k: v for k, v in state.items() if not k.startswith("fc.")}
        try:
            missing, unexpected = self.backbone.load_state_dict(filtered, strict=False)
        except RuntimeError as exc:  # shape mismatches raise even with strict=False
            raise ValueError(f"backbone_state does not fit the {self.backbone_name} backbone: {exc}") from exc
        if missing or unexpected:
            raise ValueError(
                f"backbone_state does not fit the {self.backbone_name} backbone: "
                f"missing {missing[:5]}{'...' if len(missing) > 5 else ''} ({len(missing)}), "
                f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''} ({len(unexpected)})"
            )

    def _walk(self, x: Tensor, resolution: int) -> tuple[Tensor, Tensor | None]:
        """(flat features, the last intermediate map `resolution` wide or None) of normalised input.

        Both backbones run their children in order (torchvision's ResNet flattens only before its
        fc, which is an Identity here), so walking them gives every intermediate map.
        """
        grab = None
        for layer in self.backbone.children():
            x = layer(x)
            if x.dim() == 4 and x.shape[-1] == resolution:
                grab = x
        return x.flatten(1), grab

    def _run_backbone(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        if not self.spatial_channels:
            return self.backbone(x), None
        return self._walk(x, self.spatial_resolution)

    @torch.no_grad()
    def _channels_at(self, resolution: int) -> int:
        was_training = self.backbone.training
        self.backbone.eval()
        _, fmap = self._walk(torch.zeros(1, 3, self.input_size, self.input_size), resolution)
        self.backbone.train(was_training)
        if fmap is None:
            raise ValueError(f"the {self.backbone_name} backbone has no {resolution}x{resolution} feature map")
        return int(fmap.shape[1])

    def _prepare(self, x: Tensor) -> Tensor:
        check_images(x)
        x = resize_square(x, self.input_size)
        if self.imagenet_norm:
            x = ((x + 1.0) * 0.5 - self._mean) / self._std
        return x

    def features(self, x: Tensor) -> Tensor:
        """Backbone features (N, feature_dim) of images in [-1, 1]."""
        return self._run_backbone(self._prepare(x))[0]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        feats, fmap = self._run_backbone(self._prepare(x))
        w_id, w_exp = self.mapping(feats)
        if self.spatial_head is not None:
            w_id = torch.cat([w_id, self.spatial_head(fmap).flatten(1)], dim=1)
        return w_id, w_exp

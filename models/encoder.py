"""Encoder: backbone features -> mapping network -> (w_id, w_exp).

The paper uses a ResNet50 (ImageNet-initialised) for the initial features of an aligned face; an MLP
mapping network turns them into the two codes through two linear heads on a shared trunk. The heads
are linear (no activation) so the codes are unconstrained: the pipeline averages, interpolates and
fits Gaussians to them.

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

from models.layers import EqualLinear, PixelNorm, check_images, pixel_norm, resize_square

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
    generator must rebuild, and a global average throws that layout away.
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
        exp_classes: > 0 adds a linear probe from the expression code to that many expression labels
            (`expression_logits`), so training can hold the code to the label from the first step.
        code_norm: each code comes out on its sphere (norm sqrt(dim)), so no loss can grow it without bound.
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
        exp_classes: int = 0,
        code_norm: bool = False,
    ) -> None:
        super().__init__()
        self.code_norm = code_norm
        self.backbone_name = backbone
        self.input_size = input_size
        self.id_dim = id_dim
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
        self.exp_probe = nn.Linear(exp_dim, exp_classes) if exp_classes > 0 else None

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

    def _prepare(self, x: Tensor) -> Tensor:
        check_images(x)
        x = resize_square(x, self.input_size)
        if self.imagenet_norm:
            x = ((x + 1.0) * 0.5 - self._mean) / self._std
        return x

    def features(self, x: Tensor) -> Tensor:
        """Backbone features (N, feature_dim) of images in [-1, 1]."""
        return self.backbone(self._prepare(x))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        w_id, w_exp = self.mapping(self.backbone(self._prepare(x)))
        if self.code_norm:
            # A probe's cross-entropy otherwise falls by growing the codes, and the feedback's MSE with them.
            w_id, w_exp = pixel_norm(w_id), pixel_norm(w_exp)
        return w_id, w_exp

    def expression_logits(self, w_exp: Tensor) -> Tensor:
        """The probe's expression logits of expression codes (only with ``exp_classes`` > 0)."""
        if self.exp_probe is None:
            raise ValueError("this encoder has no expression probe (exp_classes=0)")
        return self.exp_probe(w_exp)

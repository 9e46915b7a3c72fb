"""Build the torch modules from the config and keep them together (with optimisers and EMA)."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from models import Discriminator, Encoder, ExpressionClassifier, FeedbackNetwork, Generator, IdentityEmbedder
from pipeline.config import Config


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a ``train.precision`` setting on ``device`` (None: plain float32).

    bf16 is only worth it where the hardware computes it natively: emulated on an older CPU it is
    slower than float32.
    """
    if precision == "fp32":
        return None
    native = native_bf16(device)
    if precision == "bf16" and not native:
        raise ValueError(f"train.precision=bf16 but {device.type} has no native bfloat16; use fp32 or auto")
    return torch.bfloat16 if native else None


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 convolutions in hardware (oneDNN on CPU, CUDA)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported()


@dataclass
class Networks:
    encoder: Encoder
    generator: Generator
    generator_ema: Generator
    discriminator: Discriminator
    feedback: FeedbackNetwork
    classifier: ExpressionClassifier
    embedder: IdentityEmbedder

    def to(self, device: torch.device) -> Networks:
        for m in self.modules().values():
            m.to(device)
        return self

    def modules(self) -> dict[str, nn.Module]:
        return {
            "encoder": self.encoder,
            "generator": self.generator,
            "generator_ema": self.generator_ema,
            "discriminator": self.discriminator,
            "feedback": self.feedback,
            "classifier": self.classifier,
            "embedder": self.embedder,
        }


def build_networks(cfg: Config, num_identities: int, backbone_state: dict | None = None) -> Networks:
    m = cfg.model
    res = m.max_resolution
    encoder = Encoder(
        backbone=m.backbone,
        id_dim=m.id_dim,
        exp_dim=m.exp_dim,
        mapping_layers=m.mapping_layers,
        input_size=res,
        backbone_state=backbone_state,
        mapping_lr_mul=m.mapping_lr_mul,
        exp_classes=m.num_classes if m.exp_code_probe else 0,
        code_norm=m.code_norm,
    )
    generator = Generator(
        m.id_dim,
        m.exp_dim,
        res,
        m.gen_channels,
        m.gen_min_channels,
        edit_mask=m.edit_mask,
        photo_skips=m.photo_skips,
        lean=m.lean_generator,
        code_norm=m.code_norm,
    )
    generator_ema = copy.deepcopy(generator).eval().requires_grad_(False)
    discriminator = Discriminator(res, m.disc_channels, m.gen_min_channels, m.num_classes)
    feedback = FeedbackNetwork(m.id_dim, m.exp_dim, input_size=res, channels=m.feedback_channels)
    classifier = ExpressionClassifier(m.num_classes, input_size=res, channels=m.judge_channels)
    embedder = IdentityEmbedder(num_identities, embed_dim=m.judge_embed_dim, input_size=res, channels=m.judge_channels)
    return Networks(encoder, generator, generator_ema, discriminator, feedback, classifier, embedder)


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for p_ema, p in zip(ema.parameters(), model.parameters(), strict=True):
        p_ema.lerp_(p, 1.0 - decay)
    for b_ema, b in zip(ema.buffers(), model.buffers(), strict=True):
        b_ema.copy_(b)

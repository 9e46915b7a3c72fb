"""Torch modules of the decoupling GAN (Bao et al., SPIE 12462, 2023) and its judges.

Modules only: no file I/O, no weight downloads, no training loops; the pipeline passes state_dicts in.
"""

from models.discriminator import Discriminator
from models.encoder import Encoder, MappingNetwork
from models.feedback import FeedbackNetwork
from models.generator import Generator, composite
from models.judges import ExpressionClassifier, IdentityEmbedder, JudgePanel, OutsideExpressionJudge
from models.layers import AdaIN, EqualConv2d, EqualLinear, MinibatchStdDev, PixelNorm

__all__ = [
    "AdaIN",
    "Discriminator",
    "Encoder",
    "EqualConv2d",
    "EqualLinear",
    "ExpressionClassifier",
    "FeedbackNetwork",
    "Generator",
    "IdentityEmbedder",
    "JudgePanel",
    "MappingNetwork",
    "MinibatchStdDev",
    "OutsideExpressionJudge",
    "PixelNorm",
    "composite",
]

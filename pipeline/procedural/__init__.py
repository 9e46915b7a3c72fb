"""The embedded procedural face dataset: identities, action-unit expressions, nuisance, renderer."""

from pipeline.procedural.aus import PROTOTYPES, expression_aus
from pipeline.procedural.factors import IdentityFactors, sample_identity
from pipeline.procedural.nuisance import Nuisance
from pipeline.procedural.render import RENDERER_VERSION, render_face, render_truth

__all__ = [
    "PROTOTYPES",
    "RENDERER_VERSION",
    "IdentityFactors",
    "Nuisance",
    "expression_aus",
    "render_face",
    "render_truth",
    "sample_identity",
]

"""Expressions as FACS action-unit (AU) intensities.

Each basic emotion is a prototype vector over AU_NAMES; an expression at intensity t is the
prototype scaled by t. The weights follow the usual FACS/EMFACS prototypes, tuned so that the
pairs that are easy to confuse stay apart when drawn: surprise opens the jaw fully with round
relaxed lips, fear opens it less and stretches the lips wide; anger presses the lips under a
lowered brow, disgust wrinkles the nose and pulls the lip corners down.
"""

from __future__ import annotations

import numpy as np

from pipeline.expressions import AU_NAMES, EXPRESSIONS

AU_INDEX: dict[str, int] = {name.split("_", 1)[0]: i for i, name in enumerate(AU_NAMES)}

_PROTOTYPES_BY_AU: dict[str, dict[str, float]] = {
    "neutral": {},
    "happy": {"AU6": 1.0, "AU12": 1.0},
    "sad": {"AU1": 1.0, "AU4": 0.6, "AU15": 1.0},
    "surprise": {"AU1": 1.0, "AU2": 1.0, "AU5": 1.0, "AU26": 1.0},
    "fear": {"AU1": 1.0, "AU2": 0.6, "AU4": 0.7, "AU5": 1.0, "AU20": 1.0, "AU26": 0.55},
    "anger": {"AU4": 1.0, "AU5": 0.5, "AU7": 1.0, "AU24": 1.0},
    "disgust": {"AU9": 1.0, "AU15": 0.8},
}


def _vector(weights: dict[str, float]) -> np.ndarray:
    v = np.zeros(len(AU_NAMES), dtype=np.float32)
    for au, w in weights.items():
        v[AU_INDEX[au]] = w
    return v


PROTOTYPES: dict[str, np.ndarray] = {name: _vector(_PROTOTYPES_BY_AU[name]) for name in EXPRESSIONS}


def expression_aus(expression: str, intensity: float) -> np.ndarray:
    """AU intensities (12,) float32 in AU_NAMES order for `expression` at `intensity` in [0, 1]."""
    if expression not in PROTOTYPES:
        raise ValueError(f"unknown expression {expression!r}; expected one of {', '.join(EXPRESSIONS)}")
    if not 0.0 <= float(intensity) <= 1.0:
        raise ValueError(f"intensity must be in [0, 1], got {intensity}")
    return (PROTOTYPES[expression] * np.float32(intensity)).astype(np.float32)

"""Nuisance factors: what changes between photos of the same face with the same expression.

Pose (roll, a yaw approximated by shifting the inner features), scale, shift, lighting,
background and sensor noise. All are small on purpose: the face stays centred and fills most
of the frame, so a small model spends its capacity on identity and expression.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.expressions import EXPRESSION_INDEX

RGB = tuple[int, int, int]
_GREY: RGB = (128, 128, 128)


@dataclass(frozen=True)
class Nuisance:
    roll_deg: float = 0.0  # in-plane rotation, positive = counter-clockwise
    yaw: float = 0.0  # -1..1; inner features shift towards +x for positive yaw
    scale: float = 1.0
    shift_x: float = 0.0  # fraction of the frame
    shift_y: float = 0.0
    light_dx: float = 0.0  # directional shading: gain changes by light_dx across the frame width
    light_dy: float = 0.0
    brightness: float = 1.0
    bg_top: RGB = _GREY
    bg_bottom: RGB = _GREY
    noise_std: float = 0.0  # Gaussian sensor noise, in 0..255 units
    noise_seed: int = 0
    session: int = 0  # which sitting of the identity: images of one session share everything above

    @classmethod
    def identity(cls) -> Nuisance:
        """No pose change, flat light, plain grey background, no noise."""
        return cls()

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | None) -> Nuisance:
        if text is None:
            return cls.identity()
        raw: dict[str, Any] = json.loads(text)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - names)
        if unknown:
            raise ValueError(f"nuisance JSON has unknown field(s) {unknown}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})

    @classmethod
    def sample(cls, rng: np.random.Generator, strength: float = 1.0) -> Nuisance:
        """Draw a nuisance; `strength` scales every range (0 = identity apart from the noise seed)."""
        s = float(strength)
        u = rng.uniform
        # Draw every value even at strength 0 so the stream (and noise_seed) does not depend on s.
        roll = u(-5.0, 5.0)
        yaw = u(-0.6, 0.6)
        scale = u(-0.05, 0.05)
        sx, sy = u(-0.03, 0.03), u(-0.025, 0.025)
        light_angle = u(0.0, 2 * np.pi)
        light_amount = u(0.0, 0.35)
        brightness = u(-0.12, 0.12)
        bg_a = rng.integers(40, 230, size=3)
        bg_b = rng.integers(40, 230, size=3)
        noise = u(0.0, 4.0)
        noise_seed = int(rng.integers(0, 2**31 - 1))

        def towards_grey(c: np.ndarray) -> RGB:
            # Backgrounds stay muted (at most half-way from grey to the drawn colour) so the face,
            # not the backdrop, carries the contrast.
            mixed = np.asarray(_GREY, dtype=np.float64) + 0.5 * min(s, 1.0) * (c - np.asarray(_GREY))
            return (round(float(mixed[0])), round(float(mixed[1])), round(float(mixed[2])))

        return cls(
            roll_deg=round(float(roll * s), 4),
            yaw=round(float(yaw * s), 4),
            scale=round(float(1.0 + scale * s), 4),
            shift_x=round(float(sx * s), 4),
            shift_y=round(float(sy * s), 4),
            light_dx=round(float(np.cos(light_angle) * light_amount * s), 4),
            light_dy=round(float(np.sin(light_angle) * light_amount * s), 4),
            brightness=round(float(1.0 + brightness * s), 4),
            bg_top=towards_grey(bg_a.astype(np.float64)),
            bg_bottom=towards_grey(bg_b.astype(np.float64)),
            noise_std=round(float(noise * s), 4),
            noise_seed=noise_seed,
        )


def nuisance_rng(seed: int, identity_index: int, expression: str, intensity: float, sample: int) -> np.random.Generator:
    """The generator for one image's nuisance: a pure function of the image's coordinates."""
    return np.random.default_rng(
        [
            int(seed) & 0xFFFFFFFF,
            0x4E,  # tag: keeps nuisance streams apart from identity streams
            int(identity_index),
            EXPRESSION_INDEX[expression],
            round(float(intensity) * 10_000),
            int(sample),
        ]
    )

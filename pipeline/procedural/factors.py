"""Identity factors of a procedural face: everything that stays fixed across expressions.

Every factor is sampled from a generator seeded by (seed, identity index), so identity 17 of seed 0
is the same face on every machine and in every run, and adding identities never changes earlier ones.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

RGB = tuple[int, int, int]

HAIR_STYLES: tuple[str, ...] = ("bald", "short", "long", "fringe", "curly", "side_part", "bun")
GLASSES_STYLES: tuple[str, ...] = ("none", "round", "square")
BEARD_STYLES: tuple[str, ...] = ("none", "stubble", "full", "goatee")

# Skin tones from light to dark; a sampled tone is interpolated between neighbours and jittered.
_SKIN_PALETTE = np.array(
    [
        (255, 226, 200),
        (243, 200, 168),
        (228, 178, 138),
        (205, 146, 104),
        (170, 112, 74),
        (128, 82, 54),
        (92, 60, 42),
    ],
    dtype=np.float64,
)
_HAIR_COLOURS: tuple[RGB, ...] = (
    (24, 20, 18),  # black
    (60, 40, 28),  # dark brown
    (105, 70, 40),  # brown
    (150, 75, 35),  # auburn
    (205, 165, 95),  # blond
    (225, 205, 150),  # light blond
    (140, 135, 130),  # grey
    (185, 80, 40),  # red
)
_IRIS_COLOURS: tuple[RGB, ...] = (
    (70, 45, 25),  # dark brown
    (110, 70, 35),  # brown
    (60, 110, 170),  # blue
    (70, 120, 70),  # green
    (120, 100, 50),  # hazel
    (110, 120, 130),  # grey
)
_CLOTHES_COLOURS: tuple[RGB, ...] = (
    (40, 60, 110),
    (150, 40, 40),
    (40, 110, 70),
    (90, 90, 95),
    (200, 190, 170),
    (110, 60, 120),
    (30, 30, 35),
    (200, 140, 40),
)
_FRAME_COLOURS: tuple[RGB, ...] = ((20, 20, 20), (90, 50, 25), (150, 150, 160), (120, 20, 30))


def _jitter(rng: np.random.Generator, colour: RGB | np.ndarray, amount: float) -> RGB:
    c = np.asarray(colour, dtype=np.float64) + rng.uniform(-amount, amount, size=3)
    return (int(np.clip(c[0], 0, 255)), int(np.clip(c[1], 0, 255)), int(np.clip(c[2], 0, 255)))


@dataclass(frozen=True)
class IdentityFactors:
    """Geometry and colours of one procedural person, in canonical face units (canvas = 1 x 1)."""

    face_width: float  # half-width of the face oval
    face_height: float  # half-height of the upper face (forehead to cheekbone line)
    jaw_width: float  # 0 = narrow V jaw, 1 = broad square jaw
    chin_length: float  # extra length of the lower face
    skin: RGB
    hair_style: str
    hair_colour: RGB
    hairline: float  # 0 = high forehead, 1 = low
    eye_spacing: float  # half-distance between eye centres
    eye_size: float  # eye half-width
    eye_roundness: float  # eye opening height / half-width
    eye_tilt: float  # outer corner up (>0) or down (<0)
    iris_colour: RGB
    brow_thickness: float
    brow_arch: float
    brow_height: float  # brow distance above the eye centre
    nose_length: float
    nose_width: float
    mouth_width: float  # half-width of the mouth
    lip_thickness: float
    lip_colour: RGB
    ear_size: float
    clothes_colour: RGB
    glasses: str
    glasses_colour: RGB
    beard: str

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> IdentityFactors:
        raw: dict[str, Any] = json.loads(text)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - names)
        if unknown:
            raise ValueError(f"identity factors JSON has unknown field(s) {unknown}")
        # JSON turns tuples into lists; the dataclass is frozen and hashable only with tuples.
        fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
        return cls(**fixed)


def sample_identity(seed: int, index: int) -> IdentityFactors:
    """The identity factors of identity `index` under `seed` (pure function of the two)."""
    # A distinct stream per identity: the tag 0x1D keeps it apart from the nuisance streams.
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0x1D, int(index)])
    u = rng.uniform

    tone = u(0.0, len(_SKIN_PALETTE) - 1.0)
    lo = int(np.floor(tone))
    hi = min(lo + 1, len(_SKIN_PALETTE) - 1)
    skin = _SKIN_PALETTE[lo] * (1 - (tone - lo)) + _SKIN_PALETTE[hi] * (tone - lo)

    hair_style = HAIR_STYLES[int(rng.integers(len(HAIR_STYLES)))]
    hair_colour = _jitter(rng, _HAIR_COLOURS[int(rng.integers(len(_HAIR_COLOURS)))], 12)
    glasses = GLASSES_STYLES[int(rng.choice(3, p=[0.75, 0.125, 0.125]))]
    beard = BEARD_STYLES[int(rng.choice(4, p=[0.7, 0.1, 0.12, 0.08]))]

    lip_base = np.array([190.0, 95.0, 95.0]) * 0.55 + skin * 0.45 - np.array([10.0, 25.0, 20.0])
    return IdentityFactors(
        face_width=round(float(u(0.27, 0.335)), 4),
        face_height=round(float(u(0.30, 0.35)), 4),
        jaw_width=round(float(u(0.0, 1.0)), 4),
        chin_length=round(float(u(0.0, 1.0)), 4),
        skin=_jitter(rng, skin, 6),
        hair_style=hair_style,
        hair_colour=hair_colour,
        hairline=round(float(u(0.0, 1.0)), 4),
        eye_spacing=round(float(u(0.095, 0.125)), 4),
        eye_size=round(float(u(0.05, 0.065)), 4),
        eye_roundness=round(float(u(0.42, 0.62)), 4),
        eye_tilt=round(float(u(-0.25, 0.25)), 4),
        iris_colour=_jitter(rng, _IRIS_COLOURS[int(rng.integers(len(_IRIS_COLOURS)))], 10),
        brow_thickness=round(float(u(0.014, 0.026)), 4),
        brow_arch=round(float(u(0.0, 1.0)), 4),
        brow_height=round(float(u(0.07, 0.085)), 4),
        nose_length=round(float(u(0.10, 0.14)), 4),
        nose_width=round(float(u(0.035, 0.055)), 4),
        mouth_width=round(float(u(0.075, 0.1)), 4),
        lip_thickness=round(float(u(0.012, 0.022)), 4),
        lip_colour=_jitter(rng, np.clip(lip_base, 0, 255), 10),
        ear_size=round(float(u(0.045, 0.065)), 4),
        clothes_colour=_jitter(rng, _CLOTHES_COLOURS[int(rng.integers(len(_CLOTHES_COLOURS)))], 15),
        glasses=glasses,
        glasses_colour=_FRAME_COLOURS[int(rng.integers(len(_FRAME_COLOURS)))],
        beard=beard,
    )

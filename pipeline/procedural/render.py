"""Draw a procedural face from (identity factors, action units, nuisance).

Everything is drawn as polygons and polylines in canonical face units (the canvas is 1 x 1, y down)
and mapped to pixels by one affine transform that carries the pose nuisance (roll, scale, shift).
Transforming points instead of resampling a raster keeps edges sharp and rendering exact. Drawing
happens on a canvas at least 4x the output size and is downsampled with a Lanczos filter, which is
the anti-aliasing. The same inputs always give the same pixels: the only randomness is the sensor
noise, seeded from the nuisance.

The action units are drawn with exaggerated, separable cues so that a small model at 64 px can
learn them: brow position and slant, the visible white above the iris, lid narrowing, cheek
bulge and crow's feet, nose wrinkle lines, mouth corner height, mouth width, lip thickness and
an open mouth with a dark interior and teeth.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from PIL import Image, ImageDraw

from pipeline.expressions import AU_NAMES
from pipeline.procedural.aus import AU_INDEX, expression_aus
from pipeline.procedural.factors import IdentityFactors
from pipeline.procedural.nuisance import Nuisance

# Bump when a drawing change alters pixels: it is part of the dataset fingerprint, so an
# interrupted dataset is never resumed with images from two renderer versions.
RENDERER_VERSION = 2

RGB = tuple[int, int, int]
_MIN_CANVAS = 256
_MAX_CANVAS = 2048
_TEMPLE = 0.075  # how far above the eye line hair at the sides of the head ends


def _mix(a: RGB | np.ndarray, b: RGB | np.ndarray, t: float) -> RGB:
    t = min(max(float(t), 0.0), 1.0)
    c = np.asarray(a, dtype=np.float64) * (1 - t) + np.asarray(b, dtype=np.float64) * t
    return (round(float(c[0])), round(float(c[1])), round(float(c[2])))


def _scale(a: RGB, k: float) -> RGB:
    return (min(255, int(a[0] * k)), min(255, int(a[1] * k)), min(255, int(a[2] * k)))


def _ellipse_pts(cx: float, cy: float, rx: float, ry: float, n: int = 28) -> np.ndarray:
    t = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def _profile(x: np.ndarray, p: float) -> np.ndarray:
    """Superellipse half-profile on [-1, 1]: p = 2 is an ellipse, larger p is boxier."""
    return np.power(np.clip(1.0 - np.abs(x) ** p, 0.0, 1.0), 1.0 / p)


class _Painter:
    """ImageDraw wrapper taking canonical-unit points and applying the pose transform."""

    def __init__(self, image: Image.Image, nuisance: Nuisance) -> None:
        self.draw = ImageDraw.Draw(image)
        self.size = image.size[0]
        a = math.radians(nuisance.roll_deg)
        s = nuisance.scale
        # y points down, so this matrix turns the face counter-clockwise on screen for roll > 0.
        self.m = np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]]) * s * self.size
        self.offset = (np.array([0.5 + nuisance.shift_x, 0.5 + nuisance.shift_y]) * self.size)[None, :]
        self.px = s * self.size  # pixels per unit, for line widths

    def _xy(self, pts: np.ndarray) -> list[float]:
        out = (np.asarray(pts, dtype=np.float64) - 0.5) @ self.m.T + self.offset
        return out.ravel().tolist()

    def poly(self, pts: np.ndarray, fill: RGB) -> None:
        self.draw.polygon(self._xy(pts), fill=fill)

    def line(self, pts: np.ndarray, fill: RGB, width: float) -> None:
        w = max(1, round(width * self.px))
        self.draw.line(self._xy(pts), fill=fill, width=w, joint="curve" if len(pts) > 2 else None)

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, fill: RGB, n: int = 28) -> None:
        self.poly(_ellipse_pts(cx, cy, rx, ry, n), fill)


class _Face:
    """Derived geometry of one face under one set of AUs (canonical units)."""

    def __init__(self, f: IdentityFactors, aus: np.ndarray, yaw: float) -> None:
        a = {name: float(aus[i]) for name, i in AU_INDEX.items()}
        self.au = a
        self.f = f
        self.cx, self.cy = 0.5, 0.46
        self.yaw = yaw
        self.dx = 0.04 * yaw  # inner features slide sideways to suggest a turned head
        self.fw, self.fh = f.face_width, f.face_height
        # The jaw drop lengthens the lower face: the chin goes down with the open mouth.
        self.fl = 0.27 + 0.05 * f.chin_length + 0.05 * a["AU26"]
        self.ey = self.cy - 0.01
        self.skin = f.skin
        self.dark = _scale(f.skin, 0.42)  # wrinkle/crease colour, always darker than the skin
        self.nose_tip = self.ey + f.nose_length - 0.012 * a["AU9"]
        self.my = self.ey + f.nose_length + 0.07
        self.brow_base = self.ey - f.brow_height
        self.brow_colour = tuple(min(int(h * 0.85), int(s * 0.5)) for h, s in zip(f.hair_colour, f.skin, strict=True))
        # Highest a brow can go (AU1+AU2 at 1.0 plus arch); hair must stay above it.
        self.brow_ceiling = self.brow_base - 0.075 - f.brow_thickness

    # --- contour --------------------------------------------------------------------------
    def contour(self, grow: float = 1.0) -> np.ndarray:
        f = self.f
        up = np.linspace(np.pi, 2 * np.pi, 24, endpoint=False)
        upper = np.stack([self.cx + grow * self.fw * np.cos(up), self.cy + grow * self.fh * np.sin(up)], axis=1)
        lo = np.linspace(0.0, np.pi, 33)
        n = 2.0 + 1.6 * f.jaw_width  # squarer jaw for larger jaw_width
        c, s = np.cos(lo), np.sin(lo)
        cp = np.sign(c) * np.abs(c) ** (2 / n)
        sp = np.abs(s) ** (2 / n)
        taper = 1.0 - (0.32 - 0.2 * f.jaw_width) * sp**2
        lower = np.stack([self.cx + grow * self.fw * cp * taper, self.cy + grow * self.fl * sp], axis=1)
        return np.concatenate([lower, upper])

    def eye_centre(self, side: int) -> tuple[float, float]:
        return self.cx + side * self.f.eye_spacing + self.dx, self.ey


def _draw_background(size: int, n: Nuisance) -> Image.Image:
    t = np.linspace(0.0, 1.0, size)[:, None]
    grad = np.asarray(n.bg_top, np.float64)[None, :] * (1 - t) + np.asarray(n.bg_bottom, np.float64)[None, :] * t
    col = Image.fromarray(np.round(grad).astype(np.uint8)[:, None, :], "RGB")
    return col.resize((size, size), Image.Resampling.NEAREST)


def _hair_cap(p: _Painter, g: _Face, volume: float, hairline: np.ndarray, colour: RGB) -> None:
    """Hair over the top of the head: an arc above the forehead closed by a hairline curve."""
    rx, ry = g.fw * 1.07, g.fh * volume
    side_y = g.cy - _TEMPLE
    a = math.asin(min(0.99, (g.cy - side_y) / ry))
    th = np.linspace(np.pi + a, 2 * np.pi - a, 30)
    arc = np.stack([g.cx + rx * np.cos(th), g.cy + ry * np.sin(th)], axis=1)
    p.poly(np.concatenate([arc, hairline]), colour)


def _hairline(g: _Face, top: float, sweep: float = 0.0, part: float | None = None) -> np.ndarray:
    """Hairline from the right temple to the left one; lower at the temples, `sweep` tilts it."""
    xs = np.linspace(1.0, -1.0, 25)
    side_y = g.cy - _TEMPLE
    y = top + (side_y - top) * np.abs(xs) ** 2 + sweep * (xs + 1) / 2
    if part is not None:  # a centre or side parting raises the hairline where it meets the part
        y = y - 0.03 * np.exp(-(((xs - part) / 0.15) ** 2))
    # Ends just inside the cap's outer arc, leaving a short band of hair at each temple.
    return np.stack([g.cx + xs * g.fw * 0.99, np.minimum(y, g.brow_ceiling)], axis=1)


def _draw_back_hair(p: _Painter, g: _Face) -> None:
    f = g.f
    if f.hair_style == "long":
        top = _ellipse_pts(g.cx, g.cy - 0.02, g.fw * 1.2, g.fh * 1.22, 40)
        top = top[top[:, 1] <= g.cy]
        bottom = np.array(
            [
                [g.cx + g.fw * 1.25, g.cy + 0.2],
                [g.cx + g.fw * 1.05, g.cy + 0.38],
                [g.cx - g.fw * 1.05, g.cy + 0.38],
                [g.cx - g.fw * 1.25, g.cy + 0.2],
            ]
        )
        pts = np.concatenate([top[np.argsort(np.arctan2(top[:, 1] - g.cy, top[:, 0] - g.cx))], bottom])
        p.poly(pts, _scale(f.hair_colour, 0.8))
    elif f.hair_style == "curly":
        for k in range(14):
            t = np.pi * (0.95 + 1.1 * k / 13)
            p.ellipse(
                g.cx + g.fw * 1.08 * math.cos(t), g.cy + 0.02 + g.fh * 1.12 * math.sin(t), 0.06, 0.06, f.hair_colour, 16
            )
    elif f.hair_style == "bun":
        p.ellipse(g.cx, g.cy - g.fh * 1.12, 0.075, 0.065, _scale(f.hair_colour, 0.9))


def _draw_body(p: _Painter, g: _Face) -> None:
    f = g.f
    p.ellipse(0.5, 1.1, 0.47, 0.22, f.clothes_colour, 40)
    neck_top = g.cy + 0.12
    p.poly(
        np.array([[g.cx - 0.095, neck_top], [g.cx + 0.095, neck_top], [g.cx + 0.11, 0.93], [g.cx - 0.11, 0.93]]),
        _scale(f.skin, 0.82),
    )
    # Ears sit at eye-to-nose height; the one on the side the head turns away from shrinks.
    for side in (-1, 1):
        w = f.ear_size * 0.55 * (1.0 - 0.5 * g.yaw * side)
        ex = g.cx + side * (g.fw * 0.97)
        ey = g.ey + 0.045
        p.ellipse(ex, ey, w, f.ear_size, _scale(f.skin, 0.93), 20)
        p.ellipse(ex + side * w * 0.2, ey, w * 0.45, f.ear_size * 0.55, _scale(f.skin, 0.72), 16)


def _draw_front_hair(p: _Painter, g: _Face) -> None:
    f = g.f
    c = f.hair_colour
    top = g.cy - g.fh * (0.62 + 0.2 * (1.0 - f.hairline))
    style = f.hair_style
    if style == "bald":
        # A soft highlight on the scalp so a bald head reads as lit skin, not a flat disc.
        p.ellipse(g.cx - 0.06, g.cy - g.fh * 0.78, 0.07, 0.03, _mix(f.skin, (255, 255, 255), 0.18))
        return
    if style == "short":
        _hair_cap(p, g, 1.16, _hairline(g, top), c)
    elif style == "side_part":
        _hair_cap(p, g, 1.15, _hairline(g, top + 0.01, sweep=-0.06, part=0.45), c)
    elif style == "bun":
        _hair_cap(p, g, 1.08, _hairline(g, top - 0.02), c)
    elif style == "curly":
        _hair_cap(p, g, 1.12, _hairline(g, top), c)
        for k in range(9):
            x = g.cx + g.fw * (-0.85 + 1.7 * k / 8)
            p.ellipse(x, top + 0.005, 0.03, 0.025, c, 14)
    elif style == "fringe":
        fringe = g.brow_ceiling - 0.012
        xs = np.linspace(1.0, -1.0, 17)
        y = np.full_like(xs, fringe)
        y[1::2] -= 0.022  # jagged ends of the bangs
        side_y = g.cy - _TEMPLE
        y = y + (side_y - fringe) * np.abs(xs) ** 6
        line = np.stack([g.cx + xs * g.fw * 1.07, np.minimum(y, g.brow_ceiling)], axis=1)
        _hair_cap(p, g, 1.13, line, c)
    elif style == "long":
        _hair_cap(p, g, 1.14, _hairline(g, top + 0.01, part=0.0), c)
        # Side locks fall along the face edge, outside the eyes.
        for side in (-1, 1):
            x0 = g.cx + side * g.fw * 1.07
            x1 = g.cx + side * (g.fw - 0.03)
            p.poly(
                np.array(
                    [
                        [x0, g.cy - 0.05],
                        [x1, g.cy - 0.09],
                        [x1 + side * 0.015, g.cy + 0.12],
                        [x0 + side * 0.02, g.cy + 0.3],
                    ]
                ),
                c,
            )


def _draw_beard(p: _Painter, g: _Face, mouth_low: float, mouth_w: float) -> None:
    f = g.f
    if f.beard == "none":
        return
    colour = f.hair_colour if f.hair_style != "bald" else (50, 40, 35)
    if f.beard == "stubble":
        colour = _mix(f.skin, colour, 0.35)
    contour = g.contour(1.01)
    lower = contour[:33]  # right side -> chin -> left side
    if f.beard in ("full", "stubble"):
        lower = lower[lower[:, 1] > g.ey + 0.04]
        inner = np.array(
            [
                [g.cx - g.fw * 0.8, g.ey + 0.06],
                [g.cx - mouth_w - 0.035, g.my - 0.01],
                [g.cx, mouth_low + 0.03],
                [g.cx + mouth_w + 0.035, g.my - 0.01],
                [g.cx + g.fw * 0.8, g.ey + 0.06],
            ]
        )
        inner[:, 0] += g.dx
        p.poly(np.concatenate([lower, inner]), colour)
        # Moustache above the upper lip (drawn before the lips, which cover its lower edge).
        mx = g.cx + g.dx
        p.poly(
            np.array(
                [
                    [mx - mouth_w - 0.01, g.my + 0.005],
                    [mx, g.nose_tip + 0.028],
                    [mx + mouth_w + 0.01, g.my + 0.005],
                    [mx, g.my - 0.01],
                ]
            ),
            colour,
        )
    else:  # goatee
        chin = lower[lower[:, 1] > mouth_low + 0.025]
        chin = chin[np.abs(chin[:, 0] - g.cx) < 0.06]
        top = np.array([[g.cx - 0.05 + g.dx, mouth_low + 0.02], [g.cx + 0.05 + g.dx, mouth_low + 0.02]])
        if len(chin):
            p.poly(np.concatenate([chin, top]), colour)


def _draw_nose(p: _Painter, g: _Face) -> None:
    f, a = g.f, g.au
    nx = g.cx + 0.06 * g.yaw
    nt = g.nose_tip
    nw = f.nose_width * (1.0 + 0.3 * a["AU9"])
    shade = _scale(f.skin, 0.8)
    for side in (-1, 1):  # bridge sides, faint
        p.line(
            np.array([[g.cx + g.dx + side * 0.016, g.ey - 0.005], [nx + side * nw * 0.55, nt - 0.02]]),
            _scale(f.skin, 0.9),
            0.006,
        )
    p.ellipse(nx, nt + 0.006, nw * 0.8, 0.017, shade)
    p.ellipse(nx, nt - 0.004, nw * 0.5, 0.014, _scale(f.skin, 1.04))
    for side in (-1, 1):
        p.ellipse(nx + side * nw * 0.42, nt + 0.01, nw * 0.22, 0.0065, _scale(f.skin, 0.35), 16)
        wing = np.array(
            [
                [nx + side * nw * 0.55, nt - 0.014],
                [nx + side * nw * 0.95, nt - 0.002],
                [nx + side * nw * 0.95, nt + 0.01],
                [nx + side * nw * 0.6, nt + 0.016],
            ]
        )
        p.line(wing, _scale(f.skin, 0.62), 0.005)
    k = a["AU9"]
    if k > 0.02:  # "bunny lines": diagonal wrinkles across the bridge
        colour = _mix(f.skin, g.dark, 0.35 + 0.65 * k)
        for j in range(3):
            y = g.ey + 0.012 + 0.014 * j
            for side in (-1, 1):
                x0 = g.cx + g.dx * 1.2 + side * 0.005
                p.line(np.array([[x0, y], [x0 + side * 0.032, y - 0.012]]), colour, 0.006)


def _mouth_geometry(g: _Face) -> dict[str, np.ndarray | float]:
    f, a = g.f, g.au
    w = f.mouth_width * (
        1.0
        + 0.45 * a["AU20"]
        + 0.2 * a["AU12"]
        - 0.25 * a["AU24"]
        - 0.18 * a["AU26"] * (1 - a["AU20"])
        - 0.06 * a["AU15"]
    )
    corner = -0.045 * a["AU12"] + 0.035 * a["AU15"] + 0.006 * a["AU20"]
    open_up = 0.012 * a["AU26"] + 0.004 * a["AU12"] + 0.016 * a["AU9"]
    open_low = 0.085 * a["AU26"] + 0.03 * a["AU12"] + 0.004 * a["AU9"]
    thin = max(0.12, 1.0 - 0.85 * a["AU24"] - 0.35 * a["AU20"] - 0.3 * a["AU12"])
    t_up, t_low = f.lip_thickness * thin, f.lip_thickness * 1.25 * thin
    p_shape = 2.0 + 3.0 * a["AU20"] + 1.0 * a["AU9"]  # stretched lips make a boxy opening
    xs = np.linspace(-1.0, 1.0, 25)
    mx = g.cx + g.dx
    base = g.my + corner * np.abs(xs) ** 2.2
    prof = _profile(xs, p_shape)
    lip = 0.3 + 0.7 * (1 - xs**2) ** 0.7
    inner_up = base - open_up * prof
    inner_low = base + open_low * prof
    bow = 0.35 * t_up * np.exp(-((xs / 0.15) ** 2))  # dip of the cupid's bow
    outer_up = inner_up - t_up * lip + bow
    outer_low = inner_low + t_low * lip
    return {
        "x": mx + w * xs,
        "xs": xs,
        "w": w,
        "base": base,
        "inner_up": inner_up,
        "inner_low": inner_low,
        "outer_up": outer_up,
        "outer_low": outer_low,
        "open": open_up + open_low,
    }


def _draw_mouth(p: _Painter, g: _Face, m: dict[str, np.ndarray | float]) -> None:
    f, a = g.f, g.au
    x = np.asarray(m["x"])
    xs = np.asarray(m["xs"])
    pts = lambda ys: np.stack([x, np.asarray(ys)], axis=1)  # noqa: E731
    fold = min(1.0, a["AU12"] + 0.8 * a["AU9"] + 0.3 * a["AU20"] + 0.3 * a["AU6"])
    fold_colour = _mix(f.skin, g.dark, 0.15 + 0.75 * fold)
    base = np.asarray(m["base"])
    for side, idx in ((-1, 0), (1, -1)):  # nasolabial folds from the nose wing past the mouth corner
        start = np.array([g.cx + 0.06 * g.yaw + side * f.nose_width * 1.15, g.nose_tip - 0.004])
        end = np.array([x[idx] + side * 0.018, base[idx] + 0.018])
        mid = (start + end) / 2 + np.array([side * 0.018, 0.0])
        p.line(np.stack([start, mid, end]), fold_colour, 0.006)

    p.poly(np.concatenate([pts(m["outer_up"]), pts(m["outer_low"])[::-1]]), f.lip_colour)
    if float(m["open"]) > 0.004:
        inner_up, inner_low = np.asarray(m["inner_up"]), np.asarray(m["inner_low"])
        p.poly(np.concatenate([pts(inner_up), pts(inner_low)[::-1]]), (55, 18, 24))
        keep = np.abs(xs) < 0.86
        gap = inner_low - inner_up
        teeth_low = inner_up + np.minimum(gap * 0.7, 0.02)
        tooth = (236, 232, 222)
        if gap.max() > 0.006:
            p.poly(np.concatenate([pts(inner_up)[keep], pts(teeth_low)[keep][::-1]]), tooth)
        if a["AU20"] > 0.05:  # a stretched (fearful) mouth bares the lower teeth too
            lower_top = inner_low - np.minimum(gap * 0.35, 0.012 * a["AU20"])
            p.poly(np.concatenate([pts(lower_top)[keep], pts(inner_low)[keep][::-1]]), tooth)
        p.line(pts(inner_up), _scale(f.lip_colour, 0.6), 0.004)
    else:
        # Closed lips: a dark line where they meet, heavier when pressed together.
        p.line(pts(base), _scale(f.lip_colour, 0.45), 0.006 + 0.004 * a["AU24"])
    if a["AU24"] > 0.05:  # pressed lips bunch up at the corners
        for idx, side in ((0, -1), (-1, 1)):
            cxp, cyp = x[idx], base[idx]
            p.line(
                np.array([[cxp + side * 0.004, cyp - 0.012], [cxp + side * 0.01, cyp + 0.012]]),
                _mix(f.skin, g.dark, 0.7 * a["AU24"]),
                0.005,
            )


def _draw_eye(p: _Painter, g: _Face, side: int) -> None:
    f, a = g.f, g.au
    ex, ey = g.eye_centre(side)
    ew = f.eye_size * (1.0 - 0.12 * g.yaw * side)
    r_iris = 0.46 * f.eye_size
    base = f.eye_size * f.eye_roundness
    # Upper lid sits just over the top of the iris at rest; AU5 lifts it to show white above it.
    hu = (
        min(base, r_iris * 0.9)
        * (1 + 0.95 * a["AU5"])
        * (1 - 0.4 * a["AU7"])
        * (1 - 0.3 * a["AU6"])
        * (1 - 0.15 * a["AU4"])
    )
    hl = base * 0.7 * (1 - 0.55 * a["AU6"] - 0.45 * a["AU7"] - 0.3 * a["AU9"]) + 0.15 * base * a["AU5"]
    hl = max(hl, 0.08 * base)
    xs = np.linspace(-1.0, 1.0, 21)  # -1 = inner corner
    tilt = f.eye_tilt * base * xs * 0.8
    prof = _profile(xs, 2.0) ** 0.8
    xx = ex + side * ew * xs
    upper = np.stack([xx, ey - hu * prof - tilt], axis=1)
    lower = np.stack([xx, ey + hl * prof - tilt], axis=1)
    p.poly(np.concatenate([upper, lower[::-1]]), (238, 235, 230))
    gaze = 0.015 * g.yaw
    ix, iy = ex + gaze, ey + 0.1 * r_iris
    p.ellipse(ix, iy, r_iris, r_iris, f.iris_colour, 24)
    p.ellipse(ix, iy, r_iris * 0.45, r_iris * 0.45, (12, 10, 10), 16)
    p.ellipse(ix + r_iris * 0.3, iy - r_iris * 0.35, r_iris * 0.18, r_iris * 0.18, (250, 250, 250), 10)
    # Skin-coloured covers clip the iris to the lids (cheaper than a mask per eye).
    top = ey - max(hu, r_iris * 1.2) - 0.012 - abs(f.eye_tilt) * base
    bottom = ey + max(hl, r_iris * 1.2) + 0.012 + abs(f.eye_tilt) * base
    xw = np.array([xx[0] - side * 0.004, xx[-1] + side * 0.004])
    p.poly(np.concatenate([upper, [[xw[1], upper[-1, 1]], [xw[1], top], [xw[0], top], [xw[0], upper[0, 1]]]]), f.skin)
    p.poly(
        np.concatenate([lower, [[xw[1], lower[-1, 1]], [xw[1], bottom], [xw[0], bottom], [xw[0], lower[0, 1]]]]), f.skin
    )
    crease = upper.copy()
    crease[:, 1] -= 0.012 + 0.006 * a["AU5"]
    p.line(crease[3:-3], _scale(f.skin, 0.78), 0.004)
    p.line(upper, (30, 22, 20), 0.007)
    p.line(lower[2:-2], _scale(f.skin, 0.65), 0.0035)
    if a["AU6"] > 0.02:  # crow's feet at the outer corner and a bulge line under the eye
        colour = _mix(f.skin, g.dark, 0.3 + 0.7 * a["AU6"])
        ox = xx[-1] + side * 0.006
        for k in (-1, 0, 1):
            p.line(np.array([[ox, ey + 0.008 * k], [ox + side * 0.028, ey + 0.018 * k + 0.004]]), colour, 0.005)
        bag = lower[3:-3].copy()
        bag[:, 1] += 0.014
        p.line(bag, colour, 0.005)


def _draw_cheeks(p: _Painter, g: _Face) -> None:
    f, a = g.f, g.au
    rosy = (min(255, f.skin[0] + 25), int(f.skin[1] * 0.8), int(f.skin[2] * 0.8))
    colour = _mix(f.skin, rosy, 0.12 + 0.55 * a["AU6"])
    for side in (-1, 1):
        ex, ey = g.eye_centre(side)
        p.ellipse(ex + side * 0.01, ey + 0.09 - 0.02 * a["AU6"], 0.045 + 0.008 * a["AU6"], 0.03, colour, 24)


def _draw_glasses(p: _Painter, g: _Face) -> None:
    f = g.f
    if f.glasses == "none":
        return
    c = f.glasses_colour
    inner = []
    for side in (-1, 1):
        ex, ey = g.eye_centre(side)
        r = f.eye_size * 1.3
        if f.glasses == "round":
            ring = _ellipse_pts(ex, ey + 0.006, r, r * 0.92, 32)
        else:
            t = np.linspace(0, 2 * np.pi, 32, endpoint=False)
            cos, sin = np.cos(t), np.sin(t)
            ring = np.stack(
                [
                    ex + r * 1.08 * np.sign(cos) * np.abs(cos) ** 0.4,
                    ey + 0.006 + r * 0.78 * np.sign(sin) * np.abs(sin) ** 0.4,
                ],
                axis=1,
            )
        p.line(np.concatenate([ring, ring[:1]]), c, 0.008)
        inner.append([ex - side * r, ey])
        p.line(np.array([[ex + side * r, ey - 0.005], [g.cx + side * g.fw * 0.99, ey + 0.005]]), c, 0.007)
    p.line(np.array([inner[0], [g.cx + g.dx, g.ey - 0.01], inner[1]]), c, 0.007)


def _draw_brows(p: _Painter, g: _Face) -> None:
    f, a = g.f, g.au
    t = np.linspace(0.0, 1.0, 11)  # 0 = inner end
    # AU1 lifts the inner end, AU2 the outer end, AU4 pulls the inner end down and together.
    dy_in = -0.058 * a["AU1"] - 0.012 * a["AU2"] + 0.04 * a["AU4"] + 0.012 * a["AU9"]
    dy_out = -0.058 * a["AU2"] - 0.01 * a["AU1"] + 0.012 * a["AU4"]
    arch = (
        (0.004 + 0.01 * f.brow_arch)
        * (1 + 1.2 * a["AU2"])
        * max(0.1, 1 - 0.8 * a["AU4"] - 0.5 * a["AU1"] * (1 - a["AU2"]))
    )
    th = f.brow_thickness * (1 + 0.25 * a["AU4"])
    for side in (-1, 1):
        ex, _ = g.eye_centre(side)
        x_in = ex - side * (f.eye_size * 0.95 - 0.014 * a["AU4"])
        x_out = ex + side * f.eye_size * 1.2
        xs = x_in + (x_out - x_in) * t
        ys = g.brow_base + dy_in + (dy_out - dy_in) * t - arch * np.sin(np.pi * t**0.8)
        half = th * (1.05 - 0.55 * t) / 2
        p.poly(np.concatenate([np.stack([xs, ys - half], 1), np.stack([xs, ys + half], 1)[::-1]]), g.brow_colour)


def _draw_wrinkles(p: _Painter, g: _Face) -> None:
    """Forehead lines for raised brows (AU1/AU2) and the vertical furrow of a lowered brow (AU4)."""
    f, a = g.f, g.au
    raise_ = min(1.0, 0.7 * a["AU1"] + 0.7 * a["AU2"])
    if raise_ > 0.05:
        colour = _mix(f.skin, g.dark, 0.2 + 0.6 * raise_)
        half = 0.05 + 0.07 * (a["AU2"] / (a["AU1"] + a["AU2"] + 1e-6))
        for j in range(3):
            y = g.brow_base - 0.1 - 0.022 * j
            xs = np.linspace(-half, half, 9)
            p.line(np.stack([g.cx + g.dx + xs, y - 0.01 * np.cos(np.pi * xs / (2 * half))], 1), colour, 0.005)
    if a["AU4"] > 0.05:
        colour = _mix(f.skin, g.dark, 0.3 + 0.7 * a["AU4"])
        for side in (-1, 1):
            x = g.cx + g.dx + side * 0.011
            p.line(np.array([[x, g.brow_base - 0.015], [x + side * 0.004, g.brow_base + 0.028]]), colour, 0.006)


@functools.lru_cache(maxsize=16)
def _gain_grid(res: int) -> tuple[np.ndarray, np.ndarray]:
    v = (np.arange(res, dtype=np.float32) + 0.5) / res - 0.5
    return v[None, :, None], v[:, None, None]


def canvas_size(resolution: int) -> int:
    return min(_MAX_CANVAS, max(_MIN_CANVAS, 4 * resolution))


def render_face(identity: IdentityFactors, aus: np.ndarray, nuisance: Nuisance, resolution: int) -> np.ndarray:
    """Render one face as a uint8 (resolution, resolution, 3) array; exact for equal inputs."""
    if resolution < 16 or resolution & (resolution - 1):
        raise ValueError(f"resolution must be a power of two >= 16, got {resolution}")
    aus = np.asarray(aus, dtype=np.float32)
    if aus.shape != (len(AU_NAMES),):
        raise ValueError(f"aus must have shape ({len(AU_NAMES)},), got {aus.shape}")
    aus = np.clip(aus, 0.0, 1.0)
    size = canvas_size(resolution)
    img = _draw_background(size, nuisance)
    p = _Painter(img, nuisance)
    g = _Face(identity, aus, nuisance.yaw)
    m = _mouth_geometry(g)

    _draw_back_hair(p, g)
    _draw_body(p, g)
    p.poly(g.contour(), identity.skin)
    _draw_beard(p, g, float(np.max(np.asarray(m["outer_low"]))), float(m["w"]))
    _draw_wrinkles(p, g)
    _draw_front_hair(p, g)
    _draw_nose(p, g)
    _draw_mouth(p, g, m)
    for side in (-1, 1):
        _draw_eye(p, g, side)
    _draw_cheeks(p, g)
    _draw_glasses(p, g)
    _draw_brows(p, g)

    small = img.resize((resolution, resolution), Image.Resampling.LANCZOS)
    arr = np.asarray(small, dtype=np.float32)
    gx, gy = _gain_grid(resolution)
    gain = np.float32(nuisance.brightness) * (
        1 + np.float32(nuisance.light_dx) * gx + np.float32(nuisance.light_dy) * gy
    )
    arr = arr * gain
    if nuisance.noise_std > 0:
        rng = np.random.default_rng(nuisance.noise_seed)
        arr = arr + rng.normal(0.0, nuisance.noise_std, size=arr.shape).astype(np.float32)
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8)


def render_truth(
    identity_factors_json: str, expression: str, intensity: float, nuisance_json: str | None, resolution: int
) -> np.ndarray:
    """The true image for a labels row: (identity, expression, intensity, nuisance) -> uint8 HxWx3.

    Given a procedural dataset row's values this returns exactly that row's image, so generated
    swaps can be scored against ground truth. `nuisance_json=None` renders the neutral nuisance.
    """
    identity = IdentityFactors.from_json(identity_factors_json)
    nuisance = Nuisance.from_json(nuisance_json)
    return render_face(identity, expression_aus(expression, float(intensity)), nuisance, resolution)

"""Face detection and alignment with facenet-pytorch's MTCNN, and the plain resize for pre-cropped faces.

The crop is a square centred on the detected face box, rotated so the eyes are level, with a margin
proportional to the face size. Rotation and cropping happen at the source resolution and only then
is the crop resized (Lanczos, which antialiases), so small crops from large photos do not alias.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

# MTCNN's pyramid cost grows with the pixel count; faces in typical dataset photos are found just
# as well on a copy whose longest side is at most this, and the crop is still taken from the original.
DETECT_MAX_SIDE = 1024


@dataclass(frozen=True)
class FaceBox:
    """The chosen face in source-image pixels."""

    box: tuple[float, float, float, float]  # x0, y0, x1, y1
    prob: float
    left_eye: tuple[float, float] | None
    right_eye: tuple[float, float] | None


def center_square(img: Image.Image, size: int) -> Image.Image:
    """Centre square crop resized to `size` (for faces that are already cropped, or --no-detect)."""
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    crop = img.crop((left, top, left + side, top + side))
    return crop if side == size else crop.resize((size, size), Image.Resampling.LANCZOS)


class FaceAligner:
    """Detects the largest face with MTCNN and returns an eye-levelled square crop of it.

    MTCNN's three small networks ship inside the facenet-pytorch wheel (facenet_pytorch/data/*.pt),
    so nothing is downloaded. keep_all=False and select_largest=True: one face per image, the
    largest, which is the subject in dataset photos.
    """

    def __init__(self, size: int, margin: float = 0.25, device: str = "auto", min_prob: float = 0.9) -> None:
        import torch
        from facenet_pytorch import MTCNN

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.size = size
        self.margin = margin
        self.min_prob = min_prob
        self.mtcnn = MTCNN(
            image_size=size, margin=0, keep_all=False, select_largest=True, post_process=False, device=device
        )

    def detect(self, img: Image.Image) -> FaceBox | None:
        """The largest face with probability >= min_prob, or None."""
        if min(img.size) < self.mtcnn.min_face_size:
            # MTCNN's image pyramid is empty below its minimum face size and it crashes; no face fits.
            return None
        scale = 1.0
        probe = img
        if max(img.size) > DETECT_MAX_SIDE:
            scale = DETECT_MAX_SIDE / max(img.size)
            probe = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BILINEAR)
        boxes, probs, points = self.mtcnn.detect(probe, landmarks=True)
        if boxes is None or len(boxes) == 0:
            return None
        # detect() already orders by area when select_largest=True; take the largest confident one.
        for box, prob, pts in zip(boxes, probs, points, strict=True):
            if prob is None or float(prob) < self.min_prob:
                continue
            b = np.asarray(box, dtype=float) / scale
            p = None if pts is None else np.asarray(pts, dtype=float) / scale
            return FaceBox(
                box=(float(b[0]), float(b[1]), float(b[2]), float(b[3])),
                prob=float(prob),
                left_eye=None if p is None else (float(p[0, 0]), float(p[0, 1])),
                right_eye=None if p is None else (float(p[1, 0]), float(p[1, 1])),
            )
        return None

    def crop(self, img: Image.Image, face: FaceBox) -> Image.Image:
        """Square, eye-levelled crop of `face` with the margin, resized to `size`."""
        x0, y0, x1, y1 = face.box
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        side = max(x1 - x0, y1 - y0) * (1 + 2 * self.margin)
        angle = 0.0
        if face.left_eye is not None and face.right_eye is not None:
            dx = face.right_eye[0] - face.left_eye[0]
            dy = face.right_eye[1] - face.left_eye[1]
            # Guard against landmark failures: real faces in datasets are rarely tilted past 45 degrees.
            angle = math.atan2(dy, dx) if abs(math.atan2(dy, dx)) < math.pi / 4 else 0.0
        n = max(1, round(side))
        cos, sin = math.cos(angle), math.sin(angle)
        half = n / 2
        # PIL's AFFINE maps output (u, v) to input (a*u + b*v + c, d*u + e*v + f): rotate the output
        # grid by the eye angle about the face centre. Outside the photo is filled black.
        coeffs = (
            cos,
            -sin,
            cx - cos * half + sin * half,
            sin,
            cos,
            cy - sin * half - cos * half,
        )
        out = img.transform((n, n), Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BICUBIC)
        return out if n == self.size else out.resize((self.size, self.size), Image.Resampling.LANCZOS)

    def __call__(self, img: Image.Image) -> tuple[Image.Image, FaceBox] | None:
        face = self.detect(img)
        return None if face is None else (self.crop(img, face), face)

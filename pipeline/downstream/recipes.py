"""Downstream training recipes of `fersynth tstr`: what the classifier sees of each training image.

    plain       the image as stored (random horizontal flips when tstr.augment is on)
    augmented   ordinary augmentation on top: a random crop of 80-100% of the face resized back
                (small shifts and zooms), colour jitter, and a slight Gaussian blur half the time

Two recipes, so that a TSTR verdict is not one recipe's quirk. Evaluation images are never
augmented. The transforms draw from torch's RNG (seeded per DataLoader worker), so a run repeats.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PIL import Image

from pipeline.downstream.dataset import to_tensor

RECIPES = ("plain", "augmented")


def train_transform(recipe: str, image_size: int, flip: bool = True) -> Callable[[Image.Image], Any]:
    """PIL image -> float tensor in [0, 1] (3, image_size, image_size), augmented by `recipe`."""
    from torchvision import transforms as T

    ops: list[Callable[..., Any]] = [T.RandomHorizontalFlip()] if flip else []
    if recipe == "augmented":
        ops += [
            T.RandomResizedCrop(image_size, scale=(0.8, 1.0), ratio=(0.9, 1.1)),
            T.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.03),
            T.RandomApply([T.GaussianBlur(3, sigma=(0.1, 1.0))], p=0.5),
        ]
    elif recipe != "plain":
        raise ValueError(f"unknown tstr recipe {recipe!r}; expected one of {list(RECIPES)}")
    return T.Compose([*ops, to_tensor])

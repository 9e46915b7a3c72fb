"""How a real identity's render is drawn over its photo (``generate.composite``).

Generation and evaluation draw swaps the same way, so the figures `fersynth evaluate` reports are
the figures of the images a dataset holds:
- ``difference`` (any checkpoint): the photo, redrawn only where the render for the target expression
  differs from the render for the photo's own expression code (`Generator.edit`);
- ``mask``: the generator's learned edit mask, for checkpoints that have one; a checkpoint without
  one gives the plain RGB.
Novel identities have no photo and always get the plain RGB. A skip-fed generator
(``model.skip_features``) draws a real identity from its photo's encoder features too.
"""

from __future__ import annotations

import torch

from models.encoder import Encoder
from models.generator import Generator


def needs_photo_code(composite: str) -> bool:
    """Whether the composite reads each photo's own expression code (encode the photos once, up front)."""
    return composite == "difference"


def draws_over_photo(composite: str, has_mask: bool) -> bool:
    """Whether real identities' renders are drawn over a photo of them (and so need one in the plan).

    has_mask: the generator has a learned edit mask (model.edit_mask, Generator.has_mask)."""
    return needs_photo_code(composite) or has_mask


def source_features(encoder: Encoder, generator: Generator, photos: torch.Tensor) -> dict[int, torch.Tensor] | None:
    """The photos' encoder feature pyramid when the generator is skip-fed (model.skip_features), else None."""
    return encoder.features_pyramid(photos) if generator.skip_features else None


def repeat_features(features: dict[int, torch.Tensor] | None, k: int) -> dict[int, torch.Tensor] | None:
    """Every photo's features repeated ``k`` times in a row (one photo, several targets)."""
    return None if features is None else {s: f.repeat_interleave(k, 0) for s, f in features.items()}


def render_over_photo(
    generator: Generator,
    composite: str,
    w_id: torch.Tensor,
    w_exp: torch.Tensor,
    w_exp_source: torch.Tensor | None,
    source: torch.Tensor,
    resolution: int,
    features: dict[int, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(render, plain RGB, mask in [0, 1] or None) of swaps of ``source`` photos.

    ``w_exp_source`` is each photo's own expression code (the encoder's); only ``difference`` reads it.
    ``features``: the photos' :func:`source_features` (a skip-fed generator draws from them).
    """
    if generator.skip_features and features is None:
        raise ValueError("a skip-fed generator (model.skip_features) draws over a photo from its features")
    if needs_photo_code(composite):
        if w_exp_source is None:
            raise ValueError("generate.composite=difference needs each photo's own expression code")
        return generator.edit(w_id, w_exp, w_exp_source, source, resolution, features)
    render, rgb, logit = generator(w_id, w_exp, resolution, 1.0, source=source, with_parts=True, features=features)
    return render, rgb, None if logit is None else torch.sigmoid(logit)

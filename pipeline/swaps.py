"""How a real identity's render is drawn over its photo (``generate.composite``).

Generation and evaluation draw swaps the same way, so the figures `fersynth evaluate` reports are
the figures of the images a dataset holds:
- ``difference`` (any checkpoint): the photo, redrawn only where the render for the target expression
  differs from the render for the photo's own expression code (`Generator.edit`);
- ``mask``: the generator's learned edit mask, for checkpoints that have one; a checkpoint without
  one gives the plain RGB.
Novel identities have no photo and always get the plain RGB.
"""

from __future__ import annotations

import torch

from models.generator import Generator


def needs_photo_code(composite: str) -> bool:
    """Whether the composite reads each photo's own expression code (encode the photos once, up front)."""
    return composite == "difference"


def draws_over_photo(composite: str, has_mask: bool) -> bool:
    """Whether real identities' renders are drawn over a photo of them (and so need one in the plan).

    has_mask: the generator has a learned edit mask (model.edit_mask, Generator.has_mask)."""
    return needs_photo_code(composite) or has_mask


def render_over_photo(
    generator: Generator,
    composite: str,
    w_id: torch.Tensor,
    w_exp: torch.Tensor,
    w_exp_source: torch.Tensor | None,
    source: torch.Tensor,
    resolution: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(render, plain RGB, mask in [0, 1] or None) of swaps of ``source`` photos.

    ``w_exp_source`` is each photo's own expression code (the encoder's); only ``difference`` reads it.
    """
    if needs_photo_code(composite):
        if w_exp_source is None:
            raise ValueError("generate.composite=difference needs each photo's own expression code")
        return generator.edit(w_id, w_exp, w_exp_source, source, resolution)
    render, rgb, logit = generator(w_id, w_exp, resolution, 1.0, source=source, with_parts=True)
    return render, rgb, None if logit is None else torch.sigmoid(logit)

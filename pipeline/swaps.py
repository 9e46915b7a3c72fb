"""How a real identity's render is drawn over its photo (``generate.composite``).

Generation and evaluation draw swaps the same way, so the figures `fersynth evaluate` reports are
the figures of the images a dataset holds:
- ``difference`` (any checkpoint): the photo, redrawn only where the render for the target expression
  differs from the render for the photo's own expression code (`Generator.edit`);
- ``mask``: the generator's learned edit mask, for checkpoints that have one; a checkpoint without
  one gives the plain RGB.
Novel identities have no photo. A generator that reads the photo (``model.photo_skips``) draws one
neutral from its codes alone, then every expression over that render as over a photo
(`render_from_codes`): its code-only path need only draw a face, and its photo path, which learned
far more from the swap truths, draws the expression. Other generators draw them from the codes alone.
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


def render_from_codes(
    generator: Generator,
    composite: str,
    w_id: torch.Tensor,
    w_exp: torch.Tensor,
    w_neutral: torch.Tensor,
    resolution: int,
) -> torch.Tensor:
    """Renders of identities with no photo (novel identities) for target codes ``w_exp``.

    ``w_neutral`` is the neutral target code (D,): a generator that reads the photo draws each identity
    with it first and redraws that render for ``w_exp``; any other draws ``w_exp`` from the codes alone."""
    if not generator.reads_photo:
        return generator(w_id, w_exp, resolution, 1.0)
    neutral = w_neutral.to(w_exp.dtype).expand_as(w_exp)
    base = generator(w_id, neutral, resolution, 1.0).clamp(-1, 1)
    return render_over_photo(generator, composite, w_id, w_exp, neutral, base, resolution)[0]

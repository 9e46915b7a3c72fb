"""Loss terms of the decoupling GAN; each returns a scalar tensor."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.functional.image import structural_similarity_index_measure

# The 11x11 Gaussian window (sigma 1.5) of Wang et al. needs room; below 16 px SSIM is skipped.
SSIM_MIN_RESOLUTION = 16


def d_logistic(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """Non-saturating logistic discriminator loss (StyleGAN/ALAE)."""
    return F.softplus(d_fake).mean() + F.softplus(-d_real).mean()


def g_nonsaturating(d_fake: torch.Tensor) -> torch.Tensor:
    return F.softplus(-d_fake).mean()


def r1_penalty(d_real: torch.Tensor, x_real: torch.Tensor) -> torch.Tensor:
    """Squared gradient norm of D at real images (Mescheder et al. 2018)."""
    (grad,) = torch.autograd.grad(d_real.sum(), x_real, create_graph=True)
    return grad.pow(2).flatten(1).sum(1).mean()


def identity_loss(embedder: nn.Module, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """1 - cosine between the frozen identity embeddings of a render and of its source image."""
    with torch.no_grad():
        target = embedder.embed(real)
    return (1.0 - (embedder.embed(fake) * target).sum(1)).mean()


def latent_recovery(pred: tuple[torch.Tensor, torch.Tensor], w_id: torch.Tensor, w_exp: torch.Tensor) -> torch.Tensor:
    """Feedback network must give back the codes an image was rendered from (targets detached)."""
    return F.mse_loss(pred[0], w_id.detach()) + F.mse_loss(pred[1], w_exp.detach())


def weighted_l1(fake: torch.Tensor, real: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean absolute error with a per-pixel weight (N, 1, H, W), normalised by the weight's mean so the
    loss stays on the plain L1's scale and only the balance between regions moves."""
    return ((fake - real).abs() * weight).mean() / weight.mean()


def ssim_loss(fake: torch.Tensor, real: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """1 - SSIM (Wang et al. settings, as the evaluation uses) of images in [-1, 1].

    L1 alone settles on blurred averages; SSIM rewards the local contrast and structure that the
    evaluation and the gates score. The gates' SSIM (`pipeline.quality.ssim`, scikit-image) scores
    uint8 images in numpy and passes no gradient, so the loss uses torchmetrics' with the same window.
    With a per-pixel `weight` (N, 1, H, W) the SSIM map is averaged under it, normalised by its mean
    as `weighted_l1` is; without one, plainly over the image.
    """
    # In float32 even under bf16 autocast: SSIM's variances are small differences of larger means,
    # which bfloat16's 8-bit mantissa cannot resolve.
    with torch.autocast(fake.device.type, enabled=False):
        fake01, real01 = (fake.float() + 1) / 2, (real.float() + 1) / 2
        if weight is None:
            return 1.0 - structural_similarity_index_measure(fake01, real01, data_range=1.0)
        _, ssim_px = structural_similarity_index_measure(fake01, real01, data_range=1.0, return_full_image=True)
        return ((1.0 - ssim_px) * weight.float()).mean() / weight.float().mean()

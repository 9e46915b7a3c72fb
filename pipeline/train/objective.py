"""The decoupling GAN's training objective: a discriminator phase and a generator phase.

Like `StyleGAN2Loss` in stylegan2-ada-pytorch, the objective holds the networks and the loss weights
and knows nothing of optimisers, schedules, sampling or checkpoints: each phase takes one step's
batch and renders and returns its total loss and its named terms. A new experiment is a subclass that
overrides a phase (or `render`), not a flag inside the training step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pipeline.config import Config
from pipeline.core.networks import Networks
from pipeline.train import losses as L

Terms = dict[str, torch.Tensor]


@dataclass
class Batch:
    """One step's images: sources, swap targets and, on procedural data, the swaps' true images."""

    x_full: torch.Tensor  # sources at full size (the encoder's input)
    x: torch.Tensor  # sources at the stage's resolution and fade-in
    y: torch.Tensor  # source expression labels
    y_sw: torch.Tensor  # swap target expression labels
    perm: torch.Tensor | None  # targets are the sources permuted within the batch ...
    donor_full: torch.Tensor | None  # ... or images of their own (train.balanced_targets), at full size
    truth: torch.Tensor | None = None  # true swaps at the stage's resolution, for the rows in `valid`
    valid: torch.Tensor | None = None


@dataclass
class Renders:
    """The codes and images both phases read: rendered once per step."""

    w_id: torch.Tensor
    w_exp: torch.Tensor
    w_exp_sw: torch.Tensor
    rec: torch.Tensor  # reconstructions: plain RGB (what a novel identity, with no photo, gets)
    swap: torch.Tensor  # swaps, composited over their source when the generator has an edit mask
    swap_rgb: torch.Tensor
    swap_mask: torch.Tensor | None


class DecouplingObjective:
    """Adversarial, reconstruction, judge, latent-recovery, cycle and swap-truth terms (README)."""

    R1_EVERY = 4  # lazy R1 (StyleGAN2): the penalty every 4th step, scaled up to match

    def __init__(self, nets: Networks, cfg: Config) -> None:
        self.nets = nets
        self.w = cfg.train.loss
        self.full = cfg.model.max_resolution

    def render(self, batch: Batch, res: int, alpha: float) -> Renders:
        n = self.nets
        n.encoder.train()
        n.generator.train()
        if batch.perm is None:
            w_id, w_exp_all = n.encoder(torch.cat([batch.x_full, batch.donor_full]))
            b = len(batch.x_full)
            w_id, w_exp, w_exp_sw = w_id[:b], w_exp_all[:b], w_exp_all[b:]
        else:
            w_id, w_exp = n.encoder(batch.x_full)
            w_exp_sw = w_exp[batch.perm.to(w_exp.device)]
        rec = n.generator(w_id, w_exp, res, alpha)
        swap, rgb, mask = n.generator(w_id, w_exp_sw, res, alpha, source=batch.x, with_parts=True)
        return Renders(w_id, w_exp, w_exp_sw, rec, swap, rgb, mask)

    def discriminator_phase(
        self, batch: Batch, r: Renders, res: int, alpha: float, with_r1: bool
    ) -> tuple[torch.Tensor, Terms]:
        n, w = self.nets, self.w
        n.discriminator.requires_grad_(True)
        x_d = batch.x.detach().requires_grad_(with_r1)
        d_real, cls_real = n.discriminator(x_d, res, alpha)
        d_fake, _ = n.discriminator(torch.cat([r.rec, r.swap]).detach(), res, alpha)
        loss = L.d_logistic(d_real, d_fake) + w.aux_cls * F.cross_entropy(cls_real, batch.y)
        terms = {"d_adv": loss}
        if with_r1:
            terms["r1"] = L.r1_penalty(d_real, x_d)
            loss = loss + 0.5 * w.r1 * self.R1_EVERY * terms["r1"]
        return loss, terms

    def generator_phase(self, batch: Batch, r: Renders, res: int, alpha: float) -> tuple[torch.Tensor, Terms]:
        """Total loss of generator, encoder and feedback, and its terms (plus `swap_acc`, a readout)."""
        n, w = self.nets, self.w
        n.discriminator.requires_grad_(False)
        d_fake, cls_fake = n.discriminator(torch.cat([r.rec, r.swap]), res, alpha)
        terms: Terms = {}
        terms["g_adv"] = L.g_nonsaturating(d_fake)
        terms["g_cls"] = F.cross_entropy(cls_fake, torch.cat([batch.y, batch.y_sw]))
        terms["recon"] = F.l1_loss(r.rec, batch.x)
        up_sw = to_full(r.swap, self.full)
        swap_logits = n.classifier(up_sw)
        terms["swap_cls"] = F.cross_entropy(swap_logits, batch.y_sw)
        terms["identity"] = L.identity_loss(n.embedder, up_sw, batch.x_full)
        fb_sw = n.feedback(r.swap)
        fb_rec = n.feedback(r.rec)
        terms["latent"] = L.latent_recovery(fb_sw, r.w_id, r.w_exp_sw) + L.latent_recovery(fb_rec, r.w_id, r.w_exp)
        # Cycle: the identity recovered from the swap, with the source expression, gives the source back.
        terms["cycle"] = F.l1_loss(n.generator(fb_sw[0], r.w_exp, res, alpha, source=r.swap), batch.x)
        loss = (
            w.adv * (terms["g_adv"] + terms["g_cls"])
            + w.recon * terms["recon"]
            + w.swap_cls * terms["swap_cls"]
            + w.identity * terms["identity"]
            + w.latent * terms["latent"]
            + w.cycle * terms["cycle"]
        )
        use_ssim = w.ssim > 0 and res >= L.SSIM_MIN_RESOLUTION
        if use_ssim:
            terms["recon_ssim"] = L.ssim_loss(r.rec, batch.x)
            loss = loss + w.ssim * terms["recon_ssim"]
        if batch.truth is not None and w.swap_truth > 0:
            # With an edit mask the plain RGB is held to the truth too: novel identities have no photo.
            swaps = {"": r.swap} if r.swap_mask is None else {"": r.swap, "_raw": r.swap_rgb}
            for suffix, render in swaps.items():
                terms[f"swap_truth{suffix}"] = F.l1_loss(render[batch.valid], batch.truth)
                loss = loss + w.swap_truth * terms[f"swap_truth{suffix}"]
                if use_ssim:
                    terms[f"swap_ssim{suffix}"] = L.ssim_loss(render[batch.valid], batch.truth)
                    loss = loss + w.ssim * terms[f"swap_ssim{suffix}"]
        if r.swap_mask is not None:
            # GANimation's mask penalty: where the source already looks right, keep its pixels.
            terms["mask"] = torch.sigmoid(r.swap_mask).mean()
            loss = loss + w.mask * terms["mask"]
        terms["swap_acc"] = (swap_logits.argmax(1) == batch.y_sw).float().mean()
        return loss, terms


def to_full(x: torch.Tensor, full: int) -> torch.Tensor:
    """Images scaled up to the model's full size (what the frozen judges read)."""
    return x if x.shape[-1] == full else F.interpolate(x, size=(full, full), mode="bilinear", align_corners=False)

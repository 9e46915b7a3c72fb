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
from pipeline.quality.regions import changed_region
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
    rec: torch.Tensor  # reconstructions of the first len(rec) rows: plain RGB (what a novel identity gets)
    swap: torch.Tensor  # swaps, composited over their source when the generator has an edit mask
    swap_rgb: torch.Tensor
    swap_mask: torch.Tensor | None
    # Swaps drawn from the codes alone (no photo: what a novel identity gets) for `codes_rows` of the
    # batch; only for a generator that reads the photo, on data with swap truths.
    swap_codes: torch.Tensor | None = None
    codes_rows: torch.Tensor | None = None


class DecouplingObjective:
    """Adversarial, reconstruction, judge, latent-recovery, cycle and swap-truth terms (README)."""

    R1_EVERY = 4  # lazy R1 (StyleGAN2): the penalty every 4th step, scaled up to match

    def __init__(self, nets: Networks, cfg: Config) -> None:
        self.nets = nets
        self.w = cfg.train.loss
        self.full = cfg.model.max_resolution
        self.recon_share = cfg.train.recon_share
        # The feedback network reads the swaps too unless told to read only what the codes alone drew.
        self.feedback_reads_swaps = cfg.train.feedback_reads == "all" or not _reads_photo(nets.generator)

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
        k = max(1, round(len(w_id) * self.recon_share))
        rec = n.generator(w_id[:k], w_exp[:k], res, alpha)
        swap, rgb, mask = n.generator(w_id, w_exp_sw, res, alpha, source=batch.x, with_parts=True)
        r = Renders(w_id, w_exp, w_exp_sw, rec, swap, rgb, mask)
        if batch.truth is not None and self.w.code_swap_truth > 0 and _reads_photo(n.generator):
            # Half the rows with a truth keep the code-only path drawing expressions, not just reconstructions.
            rows = torch.nonzero(batch.valid).squeeze(1)
            r.codes_rows = rows[: max(1, len(rows) // 2)]
            r.swap_codes = n.generator(w_id[r.codes_rows], w_exp_sw[r.codes_rows], res, alpha)
        return r

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
        terms: Terms = {}
        k = len(r.rec)
        loss = w.recon * _put(terms, "recon", F.l1_loss(r.rec, batch.x[:k]))
        if w.adv > 0:
            n.discriminator.requires_grad_(False)
            d_fake, cls_fake = n.discriminator(torch.cat([r.rec, r.swap]), res, alpha)
            terms["g_adv"] = L.g_nonsaturating(d_fake)
            terms["g_cls"] = F.cross_entropy(cls_fake, torch.cat([batch.y[:k], batch.y_sw]))
            loss = loss + w.adv * (terms["g_adv"] + terms["g_cls"])
        up_sw = to_full(r.swap, self.full)
        # A zero-weight term costs nothing: the frozen judge still reads the swaps for the progress line.
        with torch.set_grad_enabled(w.swap_cls > 0 and torch.is_grad_enabled()):
            swap_logits = n.classifier(up_sw)
        if w.swap_cls > 0:
            loss = loss + w.swap_cls * _put(terms, "swap_cls", F.cross_entropy(swap_logits, batch.y_sw))
        if w.identity > 0:
            loss = loss + w.identity * _put(terms, "identity", L.identity_loss(n.embedder, up_sw, batch.x_full))
        if w.cycle > 0 or (w.latent > 0 and self.feedback_reads_swaps):
            fb_sw = n.feedback(r.swap)
        if w.latent > 0:
            latent = self.latent_recovery(r, fb_sw if self.feedback_reads_swaps else None)
            loss = loss + w.latent * _put(terms, "latent", latent)
        if w.cycle > 0:
            # Cycle: the identity recovered from the swap, with the source expression, gives the source back.
            cycle = F.l1_loss(n.generator(fb_sw[0], r.w_exp, res, alpha, source=r.swap), batch.x)
            loss = loss + w.cycle * _put(terms, "cycle", cycle)
        use_ssim = w.ssim > 0 and res >= L.SSIM_MIN_RESOLUTION
        if use_ssim and w.recon > 0:
            terms["recon_ssim"] = L.ssim_loss(r.rec, batch.x[:k])
            loss = loss + w.ssim * terms["recon_ssim"]
        if batch.truth is not None and w.swap_truth > 0:
            # With an edit mask the plain RGB may be held to the truth too (train.loss.raw_truth).
            swaps = {"": (r.swap, 1.0)}
            if r.swap_mask is not None and w.raw_truth > 0:
                swaps["_raw"] = (r.swap_rgb, w.raw_truth)
            weight, ssim_weight = self.region_weights(batch.truth, batch.x[batch.valid])
            for suffix, (render, share) in swaps.items():
                terms[f"swap_truth{suffix}"] = L.weighted_l1(render[batch.valid], batch.truth, weight)
                loss = loss + share * w.swap_truth * terms[f"swap_truth{suffix}"]
                if use_ssim:
                    terms[f"swap_ssim{suffix}"] = L.ssim_loss(render[batch.valid], batch.truth, ssim_weight)
                    loss = loss + share * w.ssim * terms[f"swap_ssim{suffix}"]
        encoder = getattr(n.encoder, "module", n.encoder)  # the plain module under DistributedDataParallel
        if encoder.exp_probe is not None and w.exp_code > 0:
            # The label read off both codes: the source's own and the target the swap is given.
            logits = encoder.expression_logits(torch.cat([r.w_exp, r.w_exp_sw]))
            terms["exp_code"] = F.cross_entropy(logits, torch.cat([batch.y, batch.y_sw]))
            loss = loss + w.exp_code * terms["exp_code"]
        if r.swap_codes is not None:
            truth = batch.truth[: len(r.codes_rows)]  # truths are the valid rows in order
            weight, ssim_weight = self.region_weights(truth, batch.x[r.codes_rows])
            terms["swap_truth_codes"] = L.weighted_l1(r.swap_codes, truth, weight)
            loss = loss + w.code_swap_truth * terms["swap_truth_codes"]
            if use_ssim:
                terms["swap_ssim_codes"] = L.ssim_loss(r.swap_codes, truth, ssim_weight)
                loss = loss + w.ssim * terms["swap_ssim_codes"]
        if r.swap_mask is not None:
            # GANimation's mask penalty: where the source already looks right, keep its pixels.
            terms["mask"] = torch.sigmoid(r.swap_mask).mean()
            loss = loss + w.mask * terms["mask"]
        terms["swap_acc"] = (swap_logits.argmax(1) == batch.y_sw).float().mean()
        return loss, terms

    def region_weights(self, truth: torch.Tensor, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-pixel weights of a swap's L1 and SSIM to its truth, heavier where the expression changes;
        the SSIM's is None (its plain mean) without `train.loss.ssim_changed_weight`."""
        changed = changed_region(truth, source)
        ssim_w = self.w.ssim_changed_weight
        return 1.0 + self.w.changed_weight * changed, (1.0 + ssim_w * changed if ssim_w > 0 else None)

    def latent_recovery(self, r: Renders, fb_sw: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        """The feedback network gives back the codes of the reconstructions and of the swaps: of every
        swap (`fb_sw`, its reading of them: the paper), or, with `train.feedback_reads: codes` (fb_sw
        None), only of the swaps drawn from the codes alone."""
        fb, k = self.nets.feedback, len(r.rec)
        total = L.latent_recovery(fb(r.rec), r.w_id[:k], r.w_exp[:k])
        if fb_sw is not None:
            return total + L.latent_recovery(fb_sw, r.w_id, r.w_exp_sw)
        if r.swap_codes is not None:
            rows = r.codes_rows
            total = total + L.latent_recovery(fb(r.swap_codes), r.w_id[rows], r.w_exp_sw[rows])
        return total


def _reads_photo(generator: torch.nn.Module) -> bool:
    return getattr(generator, "module", generator).reads_photo  # the plain module under DDP


def _put(terms: Terms, name: str, value: torch.Tensor) -> torch.Tensor:
    terms[name] = value
    return value


def to_full(x: torch.Tensor, full: int) -> torch.Tensor:
    """Images scaled up to the model's full size (what the frozen judges read)."""
    return x if x.shape[-1] == full else F.interpolate(x, size=(full, full), mode="bilinear", align_corners=False)

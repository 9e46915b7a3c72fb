"""Issue 29's bisection: the lean generator in the editor's loop, the recipe's pieces added one at a time.

The editor's loop (`editor_baseline.py --arch lean`) hands the generator the target label through a
linear map and no identity code, and trains it on the changed-region-weighted L1 to the swap truth
alone. The recipe differs in several pieces at once; this adds them one by one, for a fixed number of
steps (batch 32, 64 px, bf16 autocast), then scores 35 validation sources x 7 targets (245 swaps) as
`editor_baseline.score_swaps` does. The relative weights are the recipe's (photo-64: swap truth,
SSIM, code-only swap and reconstruction 10 each; latent and adversary 1).

    python benchmarks/editor_loop_bisect.py --steps 400                                  # the loop itself
    python benchmarks/editor_loop_bisect.py --steps 400 --identity encoder               # + the encoder's w_id
    python benchmarks/editor_loop_bisect.py --steps 400 --code encoder --identity encoder \
        --pieces probe gen-sphere enc-sphere ssim code-only latent

Pieces: probe (the expression probe's cross-entropy on both codes), gen-sphere / enc-sphere
(`model.code_norm` in the generator / the encoder), ssim (1 - SSIM of the swap), code-only (half the
swaps also drawn without the photo, held to the truth), recon (half the sources drawn back from their
own codes, no photo), latent (the feedback network recovers the codes from the swap), latent-codes
(it recovers them from the code-only swaps only; needs code-only), adv (a discriminator with an
auxiliary classifier), detach-id (no gradient from the generator into w_id).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from editor_baseline import N_CLS, RES, sample_swaps, score_swaps, target_maps
from torch import Tensor, nn

from models.discriminator import Discriminator
from models.encoder import Encoder
from models.feedback import FeedbackNetwork
from models.generator import Generator
from pipeline.core.codes import expression_target, fit_target_codes
from pipeline.core.data import TrainData, load_split
from pipeline.quality.regions import changed_region
from pipeline.train.losses import d_logistic, g_nonsaturating, latent_recovery, ssim_loss, weighted_l1

PIECES = (
    "probe",
    "gen-sphere",
    "enc-sphere",
    "ssim",
    "code-only",
    "recon",
    "latent",
    "latent-codes",
    "adv",
    "detach-id",
)
ID_DIM, EXP_DIM = 64, 16
CPU = torch.device("cpu")


class Bisect:
    """The networks and one training step of the loop with the chosen pieces."""

    def __init__(self, code: str, identity: str, pieces: set[str], encoder_lr: float) -> None:
        torch.manual_seed(0)
        self.code, self.identity, self.pieces = code, identity, pieces
        self.uses_encoder = "encoder" in (code, identity)
        self.gen = Generator(
            ID_DIM, EXP_DIM, RES, 128, 32, edit_mask=True, photo_skips=True, lean=True, code_norm="gen-sphere" in pieces
        )
        self.label = nn.Linear(N_CLS, EXP_DIM)
        self.enc = Encoder(
            "small", ID_DIM, EXP_DIM, 3, RES, mapping_lr_mul=1.0, exp_classes=N_CLS, code_norm="enc-sphere" in pieces
        )
        # Built even when unused, so every variant starts from the same weights (the same draws of the seed).
        self.feedback = FeedbackNetwork(ID_DIM, EXP_DIM, RES, 32)
        self.disc = Discriminator(RES, 64, 32, N_CLS)
        groups = [{"params": self.gen.parameters(), "lr": 0.005}, {"params": self.label.parameters(), "lr": 0.005}]
        if self.uses_encoder:
            groups.append({"params": self.enc.parameters(), "lr": encoder_lr})
        if {"latent", "latent-codes"} & pieces:
            groups.append({"params": self.feedback.parameters(), "lr": 0.005})
        self.opt = torch.optim.Adam(groups, betas=(0.9, 0.99))
        self.disc_opt = torch.optim.Adam(self.disc.parameters(), lr=0.002, betas=(0.0, 0.99))

    def step(self, data: TrainData, rng: torch.Generator) -> tuple[float, float]:
        p = self.pieces
        src, donor, truth = sample_swaps(data, 32, rng)
        x, t, d = (data.batch(rows, RES, 1.0, CPU) for rows in (src, truth, donor))
        cls, inten = data.labels[donor], data.intensity_code[donor].float() / 100
        loss = torch.zeros(())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if self.uses_encoder:
                w_id_all, w_exp_all = self.enc(torch.cat([x, d]))
                w_id, w_exp_donor = w_id_all[: len(x)], w_exp_all[len(x) :]
                if "probe" in p:
                    logits = self.enc.expression_logits(w_exp_all).float()
                    loss = loss + F.cross_entropy(logits, torch.cat([data.labels[src], cls]))
            w_exp = self.label(target_maps(cls, inten)) if self.code == "label" else w_exp_donor
            wid = torch.zeros(len(x), ID_DIM) if self.identity == "zero" else w_id
            if "detach-id" in p:
                wid = wid.detach()
            out, _, mask = self.gen(wid, w_exp, RES, 1.0, source=x, with_parts=True)
        weight = 1.0 + 10.0 * changed_region(t, x)
        loss = loss + weighted_l1(out.float(), t, weight)
        h = len(x) // 2
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if "code-only" in p:
                codes_only = self.gen(wid[:h], w_exp[:h], RES, 1.0).float()
                loss = loss + weighted_l1(codes_only, t[:h], weight[:h])
            if "recon" in p:
                if self.code == "encoder":
                    id_own, exp_own = self.enc(x[:h])  # the sources' own codes, as the recipe reads them
                    wid_own = id_own if self.identity == "encoder" else wid[:h]
                else:
                    own_label = target_maps(data.labels[src[:h]], data.intensity_code[src[:h]].float() / 100)
                    wid_own, exp_own = wid[:h], self.label(own_label)
                loss = loss + F.l1_loss(self.gen(wid_own, exp_own, RES, 1.0).float(), x[:h])
        if "latent" in p:
            loss = loss + 0.1 * latent_recovery(self.feedback(out.float()), wid.float(), w_exp.float())
        if "latent-codes" in p:
            loss = loss + 0.1 * latent_recovery(self.feedback(codes_only), wid[:h].float(), w_exp[:h].float())
        if "adv" in p:
            self.disc.requires_grad_(False)
            d_fake, c_fake = self.disc(out.float(), RES)
            loss = loss + 0.1 * (g_nonsaturating(d_fake) + F.cross_entropy(c_fake, cls))
        if "ssim" in p:
            loss = loss + ssim_loss(out.float(), t)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        if "adv" in p:
            self.disc.requires_grad_(True)
            d_real, c_real = self.disc(x, RES)
            d_loss = d_logistic(d_real, self.disc(out.detach().float(), RES)[0]) + F.cross_entropy(
                c_real, data.labels[src]
            )
            self.disc_opt.zero_grad(set_to_none=True)
            d_loss.backward()
            self.disc_opt.step()
        return float(loss), float(torch.sigmoid(mask.float()).mean())

    def renderer(self, train: TrainData):
        """Swaps as the product draws them: target codes fitted on the training split when codes are learned."""
        self.gen.eval()
        self.enc.eval()
        codes = fit_target_codes(self.enc, train, N_CLS, CPU) if self.uses_encoder else None

        @torch.no_grad()
        def render(x: Tensor, cls: Tensor, inten: Tensor) -> Tensor:
            w_id, _ = self.enc(x)
            w_exp = self.label(target_maps(cls, inten)) if codes is None else expression_target(codes, cls, inten)
            wid = torch.zeros(len(x), ID_DIM) if self.identity == "zero" else w_id
            return self.gen(wid, w_exp, RES, 1.0, source=x)

        return render


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("data/procedural-64"))
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--code", choices=("label", "encoder"), default="label", help="the target expression code")
    ap.add_argument("--identity", choices=("zero", "encoder"), default="zero", help="the identity code")
    ap.add_argument("--pieces", nargs="*", choices=PIECES, default=[])
    ap.add_argument("--encoder-lr", type=float, default=0.002)
    args = ap.parse_args()
    if "latent-codes" in args.pieces and "code-only" not in args.pieces:
        ap.error("--pieces latent-codes reads the code-only swaps: add code-only")
    train = load_split(args.data, RES, "train")
    loop = Bisect(args.code, args.identity, set(args.pieces), args.encoder_lr)
    rng = torch.Generator().manual_seed(0)
    start = time.monotonic()
    for step in range(1, args.steps + 1):
        loss, mask = loop.step(train, rng)
        if step % 50 == 0:
            print(f"step {step}  {time.monotonic() - start:.0f} s  loss {loss:.4f}  mask open {mask:.3f}", flush=True)
    scores = score_swaps(loop.renderer(train), load_split(args.data, RES, "val"), args.data, 35)
    keys = ("ssim_changed", "psnr_changed", "ssim_whole", "outside_correct")
    print(vars(args) | {k: round(scores[k], 3) for k in keys})


if __name__ == "__main__":
    main()

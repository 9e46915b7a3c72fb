"""Yardstick for issue 29: a small conditional editor trained on swap truths, scored like our swaps.

The editor is handed the source photo and the target expression as one-hot x intensity maps tiled
over it; a small U-Net (skips at 32, 16 and 8 px, the target again at the bottleneck) draws a colour
image and a mask, render = mask * colour + (1 - mask) * photo, and the only loss is L1 to the swap
truth, counting a pixel the expression changes 11 times one it leaves. No adversary, no judge, no
codes: it shows what the data allow in a given number of minutes on these cores.

`score_swaps` is also how any checkpoint's swaps are read here quickly: every top-intensity source
of a split swapped to every class at its top intensity, scored over the changed region and the
rest (`pipeline.quality.regions`) and read by the outside judge.

    python benchmarks/editor_baseline.py --minutes 12 --max-sources 140      # train, then score on val
    python benchmarks/editor_baseline.py --arch generator --lr 0.005 --minutes 12 --max-sources 140
    python benchmarks/editor_baseline.py --checkpoint runs/photo-64/checkpoints/final.pt   # score only
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.generator import Generator
from pipeline.core.checkpoint import load_checkpoint
from pipeline.core.codes import expression_target, fit_target_codes
from pipeline.core.data import TrainData, load_split
from pipeline.core.legacy import checkpoint_config
from pipeline.core.networks import build_networks
from pipeline.core.trained import load_trained
from pipeline.quality.outside_judge import load_outside_judge
from pipeline.quality.regions import changed_region, region_scores
from pipeline.quality.ssim import ssim_batch
from pipeline.swaps import render_over_photo
from pipeline.train.grids import to_uint8
from pipeline.train.losses import weighted_l1

N_CLS = 7
RES = 64

# Draws a swap: (source photos in [-1, 1], target class, target intensity in [0, 1]) -> render.
Render = Callable[[Tensor, Tensor, Tensor], Tensor]


def target_maps(cls: Tensor, intensity: Tensor, n_cls: int = N_CLS) -> Tensor:
    """The label as the editor is handed it: one-hot x intensity, (N, n_cls)."""
    return F.one_hot(cls, n_cls).float() * intensity[:, None]


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(8, cout), nn.LeakyReLU(0.2))


class Editor(nn.Module):
    """Photo + target maps -> (colour, mask logit); a U-Net with skips at 32, 16 and 8 px."""

    def __init__(self, n_cls: int = N_CLS, width: int = 32) -> None:
        super().__init__()
        c = [width, width * 2, width * 4, width * 8]  # 64, 32, 16, 8 px
        self.n_cls = n_cls
        self.inp = _conv(3 + n_cls, c[0])
        self.down = nn.ModuleList([_conv(c[0], c[1], 2), _conv(c[1], c[2], 2), _conv(c[2], c[3], 2)])
        self.bottom = nn.Sequential(_conv(c[3] + n_cls, c[3], 2), _conv(c[3], c[3]))  # 4 px, target again
        self.up = nn.ModuleList([_conv(c[3] * 2, c[2]), _conv(c[2] * 2, c[1]), _conv(c[1] * 2, c[0])])
        self.last = _conv(c[0], c[0])
        self.head = nn.Conv2d(c[0], 4, 3, padding=1)

    def forward(self, photo: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        def maps(side: int) -> Tensor:
            return target[:, :, None, None].expand(-1, -1, side, side)

        h = self.inp(torch.cat([photo, maps(photo.shape[-1])], 1))
        skips = []
        for down in self.down:
            h = down(h)
            skips.append(h)  # 32, 16, 8 px
        h = self.bottom(torch.cat([h, maps(h.shape[-1])], 1))
        for up, skip in zip(self.up, reversed(skips), strict=True):
            h = up(torch.cat([F.interpolate(h, scale_factor=2), skip], 1))
        out = self.head(self.last(F.interpolate(h, scale_factor=2)))
        return torch.tanh(out[:, :3]), out[:, 3:]

    def render(self, photo: Tensor, cls: Tensor, intensity: Tensor) -> Tensor:
        colour, logit = self(photo, target_maps(cls, intensity, self.n_cls))
        return torch.lerp(photo, colour.float(), torch.sigmoid(logit.float()))


class GeneratorEditor(nn.Module):
    """Our generator (photo path and edit mask) driven as the editor is: the label mapped to a code, no identity code.

    Trained in the editor's loop it separates what the generator's architecture can draw from what the
    rest of the training system (encoder codes, adversary, feedback, schedule) lets it learn.
    """

    def __init__(self, n_cls: int = N_CLS, exp_dim: int = 16, channels: int = 128, lean: bool = False) -> None:
        super().__init__()
        self.n_cls = n_cls
        self.code = nn.Linear(n_cls, exp_dim)
        self.generator = Generator(1, exp_dim, RES, channels, 32, edit_mask=True, photo_skips=True, lean=lean)

    def render(self, photo: Tensor, cls: Tensor, intensity: Tensor) -> Tensor:
        w_exp = self.code(target_maps(cls, intensity, self.n_cls))
        return self.generator(w_exp.new_zeros(len(w_exp), 1), w_exp, RES, 1.0, source=photo)


def sample_swaps(data: TrainData, n: int, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """(source rows, donor rows, truth rows) of `n` random swaps that have a truth."""
    src = torch.randint(data.n, (n,), generator=gen)
    donor = torch.randint(data.n, (n,), generator=gen)
    truth = data.truth_rows(src, donor)
    keep = truth >= 0
    return src[keep], donor[keep], truth[keep]


def train_editor(
    data: TrainData,
    minutes: float,
    arch: str = "unet",
    batch: int = 32,
    lr: float = 1e-3,
    bf16: bool = False,
    seed: int = 0,
) -> Editor | GeneratorEditor:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    editor = Editor() if arch == "unet" else GeneratorEditor(lean=arch == "lean")
    opt = torch.optim.Adam(editor.parameters(), lr=lr, betas=(0.9, 0.99))
    cpu = torch.device("cpu")
    start, step = time.monotonic(), 0
    while time.monotonic() - start < minutes * 60:
        src, donor, truth = sample_swaps(data, batch, gen)
        x, t = data.batch(src, RES, 1.0, cpu), data.batch(truth, RES, 1.0, cpu)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = editor.render(x, data.labels[donor], data.intensity_code[donor].float() / 100)
        loss = weighted_l1(out.float(), t, 1.0 + 10.0 * changed_region(t, x))  # as train.loss.changed_weight: 10
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % 100 == 0:
            print(f"step {step}  {time.monotonic() - start:.0f} s  loss {loss.item():.4f}", flush=True)
    print(f"trained {step} steps in {time.monotonic() - start:.0f} s")
    return editor.eval()


@torch.no_grad()
def score_swaps(render: Render, data: TrainData, root: Path, max_sources: int | None = None) -> dict[str, float]:
    """Every top-intensity source swapped to every class at its top intensity, scored against its truth."""
    cpu = torch.device("cpu")
    top = {c: int(data.intensity_code[data.labels == c].max()) for c in range(N_CLS)}
    src = torch.tensor([i for i in range(data.n) if top[int(data.labels[i])] == int(data.intensity_code[i])])
    src = src[:max_sources]
    judge, _ = load_outside_judge(root, RES, N_CLS, cpu, 1500)
    out: dict[str, list[np.ndarray]] = {}
    for s in range(0, len(src), 32):
        rows = src[s : s + 32].repeat_interleave(N_CLS)
        cls = torch.arange(N_CLS).repeat(len(rows) // N_CLS)
        inten = torch.tensor([top[c] / 100 for c in cls.tolist()])
        truth_rows = torch.tensor(
            [
                data.truth_key[(int(data.identity[r]), int(data.session[r]), c, top[c])]
                for r, c in zip(rows.tolist(), cls.tolist(), strict=True)
            ]
        )
        x, truth = data.batch(rows, RES, 1.0, cpu), data.batch(truth_rows, RES, 1.0, cpu)
        fake = render(x, cls, inten).clamp(-1, 1)
        fake_u8, truth_u8 = to_uint8(fake), to_uint8(truth)
        where = changed_region(truth, x)[:, 0].bool().numpy()
        scores = region_scores(fake_u8, truth_u8, where)
        scores["ssim_whole"] = ssim_batch(fake_u8, truth_u8, data_range=255)
        scores["outside_correct"] = (judge(fake).argmax(1) == cls).float().numpy()
        scores["cls"] = cls.numpy()
        for k, v in scores.items():
            out.setdefault(k, []).append(v)
    flat = {k: np.concatenate(v) for k, v in out.items()}
    result = {k: float(np.nanmean(v)) for k, v in flat.items() if k != "cls"}
    for c in range(N_CLS):
        result[f"outside_class_{c}"] = float(flat["outside_correct"][flat["cls"] == c].mean())
    result["swaps"] = len(flat["cls"])
    return result


def checkpoint_renderer(checkpoint: Path, train: TrainData | None = None, raw: bool = False) -> Render:
    """Swaps of a finished checkpoint; an unfinished one (no target codes yet) gets codes fitted on `train`.

    `raw`: draw with the trained generator instead of its EMA copy (the one renders use)."""
    ckpt = load_checkpoint(checkpoint)
    if ckpt.get("codes"):
        cfg, nets, ckpt = load_trained(checkpoint, device=torch.device("cpu"))
        codes = ckpt["codes"]
    else:
        cfg = checkpoint_config(ckpt, str(checkpoint))
        nets = build_networks(cfg, len(json.loads(ckpt["identity_names"])), None)
        for k, m in nets.modules().items():
            m.load_state_dict(ckpt["nets"][k])
            m.eval().requires_grad_(False)
        codes = fit_target_codes(nets.encoder, train, N_CLS, torch.device("cpu"))
    if raw:
        nets.generator_ema.load_state_dict(ckpt["nets"]["generator"])

    def render(x: Tensor, cls: Tensor, inten: Tensor) -> Tensor:
        w_id, w_exp = nets.encoder(x)
        target = expression_target(codes, cls, inten)
        g = nets.generator_ema
        return render_over_photo(g, cfg.generate.composite, w_id, target, w_exp, x, RES)[0]

    return render


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("data/procedural-64"))
    ap.add_argument("--minutes", type=float, default=12.0)
    ap.add_argument("--checkpoint", type=Path, help="score this checkpoint's swaps instead of training the editor")
    ap.add_argument(
        "--arch",
        choices=("unet", "generator", "lean"),
        default="unet",
        help="the editor's U-Net, our generator, or it lean",
    )
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument(
        "--bf16", action="store_true", help="train under bfloat16 autocast, as train.precision=auto does here"
    )
    ap.add_argument("--raw-generator", action="store_true", help="with --checkpoint: the generator, not its EMA")
    ap.add_argument("--split", default="val")
    ap.add_argument("--max-sources", type=int)
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    data = load_split(args.data, RES, args.split)
    if args.checkpoint:
        render = checkpoint_renderer(args.checkpoint, load_split(args.data, RES, "train"), args.raw_generator)
    else:
        editor = train_editor(load_split(args.data, RES, "train"), args.minutes, args.arch, lr=args.lr, bf16=args.bf16)
        render = editor.render
    for k, v in score_swaps(render, data, args.data, args.max_sources).items():
        print(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}")


if __name__ == "__main__":
    main()

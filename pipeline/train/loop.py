"""The training loop: judges first, then one progressive stage at a time, resumable at any step.

`Trainer` holds the whole state. Every `checkpoint_every` steps (and at the end of each stage) it
writes `checkpoints/last.pt` atomically; a new `Trainer` on the same output folder resumes from
it and continues the same schedule: same stage, step, fade-in alpha, optimiser moments, EMA and
random-number state.
"""

from __future__ import annotations

import functools
import json
import math
import time
import warnings
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from pipeline.config import Config, config_to_dict
from pipeline.train import losses as L
from pipeline.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from pipeline.train.codes import fit_target_codes
from pipeline.train.data import TrainData, dataset_key, downsample, load_split
from pipeline.train.judges import train_judges
from pipeline.train.networks import Networks, autocast_dtype, build_networks, pick_device, update_ema

LAST = "last.pt"
# Settings that change where or how fast a run computes, not what it learns: a run may resume with others.
# precision is among them: weights and optimiser state are float32 either way.
SPEED_SETTINGS = ("out_dir", "device", "num_threads", "channels_last", "precision", "cache_dir")
# Loss terms that exist only where the data holds each swap's true image (procedural data).
TRUTH_TERMS = ("swap_truth", "swap_change", "map_invariance")
FINAL = "final.pt"


class TrainingDiverged(RuntimeError):
    """A loss became NaN/inf; the message names the step and the loss. The last good checkpoint stays."""


@dataclass
class StepInfo:
    phase: str  # "judges" or "stage-<res>"
    step: int
    total: int
    metrics: dict[str, float]


ProgressFn = Callable[[StepInfo], None]


class Trainer:
    def __init__(self, cfg: Config, out_dir: Path | None = None, progress: ProgressFn | None = None) -> None:
        self.cfg = cfg
        self.out = Path(out_dir or cfg.train.out_dir)
        self.ckpt_dir = self.out / "checkpoints"
        self.progress = progress
        if cfg.train.num_threads:
            torch.set_num_threads(cfg.train.num_threads)
        self.device = pick_device(cfg.train.device)
        self.amp_dtype = autocast_dtype(cfg.train.precision, self.device)
        self.data = load_split(cfg.data.root, cfg.model.max_resolution, "train", cfg.data.cache_dir)
        present = int(self.data.labels.max()) + 1
        n_cls = len(set(self.data.labels.tolist()))
        if n_cls < cfg.model.num_classes or present > cfg.model.num_classes:
            raise ValueError(
                f"{cfg.data.root}: training split has {n_cls} expression classes but model.num_classes is "
                f"{cfg.model.num_classes}"
            )
        if cfg.train.cross_expression_map and not self.data.truth_key:
            raise ValueError(
                f"{cfg.data.root}: train.cross_expression_map needs images of each person and session in "
                "several expressions (procedural data); this dataset has none"
            )
        unpaired = [k for k in TRUTH_TERMS if getattr(cfg.train.loss, k) > 0]
        if unpaired and not self.data.truth_key:
            # A warning, not an error: one recipe should train on procedural and photo data alike.
            warnings.warn(
                f"{cfg.data.root}: no image of a person's session in another expression (photo data), so "
                f"{', '.join('train.loss.' + k for k in unpaired)} cannot apply and are skipped; set them to 0 "
                "to silence this",
                stacklevel=2,
            )
        self.data_key = dataset_key(cfg.data.root)
        torch.manual_seed(cfg.train.seed)  # network initialisation is part of the run's determinism
        self.nets = build_networks(cfg, len(self.data.identity_names), self._backbone_state()).to(self.device)
        if cfg.train.channels_last:
            for m in self.nets.modules().values():
                m.to(memory_format=torch.channels_last)
        n = self.nets
        t = cfg.train
        self.opt_g = torch.optim.Adam(
            [
                {"params": n.generator.parameters(), "lr": t.lr},
                {"params": n.feedback.parameters(), "lr": t.lr},
                {"params": n.encoder.parameters(), "lr": t.encoder_lr},
            ],
            betas=t.gen_betas or t.betas,
        )
        self.opt_d = torch.optim.Adam(n.discriminator.parameters(), lr=t.disc_lr or t.lr, betas=t.betas)
        # The networks train_step calls: the plain ones, or DDP wrappers of the same modules set by
        # pipeline.train.ddp. Checkpoints always save the plain `self.nets` (no "module." prefixes).
        self.train_nets: Networks = self.nets
        # Only the main process (rank 0 under DDP) writes checkpoints and runs `finalize`.
        self.is_main = True
        self.gen = torch.Generator().manual_seed(t.seed)
        self.stage_idx = 0
        self.stage_step = 0
        self.global_step = 0
        self.judges_done = False
        self.history: list[dict[str, float]] = []
        self.stage_metrics: list[dict[str, Any]] = []
        self.codes: dict[str, torch.Tensor] | None = None
        self.eval_judges: dict[str, Any] | None = None
        self.calibration: dict[str, Any] | None = None
        self._resume_if_possible()

    # ----------------------------------------------------------------- state
    def _backbone_state(self) -> dict | None:
        path = self.cfg.model.backbone_weights
        if path is None:
            return None
        if not Path(path).is_file():
            raise FileNotFoundError(f"model.backbone_weights: file not found: {path}")
        return torch.load(path, map_location="cpu", weights_only=True)

    def state_dict(self) -> dict[str, Any]:
        cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
        return {
            "config": json.dumps(config_to_dict(self.cfg), sort_keys=True),
            "data_key": self.data_key,
            "identity_names": json.dumps(self.data.identity_names),
            "nets": {k: m.state_dict() for k, m in self.nets.modules().items()},
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "stage_idx": self.stage_idx,
            "stage_step": self.stage_step,
            "global_step": self.global_step,
            "alpha": self.alpha(),
            "resolution": self.stage.resolution
            if self.stage_idx < len(self.cfg.train.stages)
            else self.cfg.model.max_resolution,
            "judges_done": self.judges_done,
            "rng_torch": torch.get_rng_state(),
            "rng_cuda": cuda_rng,
            "rng_sampler": self.gen.get_state(),
            "history": json.dumps(self.history),
            "stage_metrics": json.dumps(self.stage_metrics),
            "codes": self.codes or {},
            "eval_judges": self.eval_judges or {},
            "calibration": self.calibration or {},
        }

    def save(self, name: str = LAST) -> Path:
        if not self.is_main:
            return self.ckpt_dir / name
        return save_checkpoint(self.ckpt_dir / name, self.state_dict())

    def _resume_if_possible(self) -> None:
        path = self.ckpt_dir / LAST
        if not path.exists():
            return
        ckpt = load_checkpoint(path, map_location="cpu")
        # Through today's Config, so a field added since the checkpoint (at its default) is no mismatch.
        saved_cfg = config_to_dict(Config.model_validate(json.loads(ckpt["config"])))
        mine = config_to_dict(self.cfg)
        for section in ("model", "train", "data"):
            a = {k: v for k, v in saved_cfg[section].items() if k not in SPEED_SETTINGS}
            b = {k: v for k, v in mine[section].items() if k not in SPEED_SETTINGS}
            if a != b:
                diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
                raise CheckpointError(
                    f"{path}: run was started with a different {section} config ({', '.join(f'{section}.{k}' for k in diff)}); "
                    "use a new train.out_dir or the original config"
                )
        if ckpt["data_key"] != self.data_key:
            raise CheckpointError(f"{path}: run was started on different training data (content key differs)")
        for k, m in self.nets.modules().items():
            m.load_state_dict(ckpt["nets"][k])
        self.opt_g.load_state_dict(ckpt["opt_g"])
        self.opt_d.load_state_dict(ckpt["opt_d"])
        self.stage_idx = int(ckpt["stage_idx"])
        self.stage_step = int(ckpt["stage_step"])
        self.global_step = int(ckpt["global_step"])
        self.judges_done = bool(ckpt["judges_done"])
        torch.set_rng_state(ckpt["rng_torch"])
        if ckpt["rng_cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ckpt["rng_cuda"])
        self.gen.set_state(ckpt["rng_sampler"])
        self.history = json.loads(ckpt["history"])
        self.stage_metrics = json.loads(ckpt["stage_metrics"])
        self.codes = ckpt["codes"] or None
        self.eval_judges = ckpt.get("eval_judges") or None
        self.calibration = ckpt.get("calibration") or None
        if self.judges_done:
            for judge in (*self.nets.expression_judges(), self.nets.embedder):
                judge.eval().requires_grad_(False)
        self.resumed_from = (self.stage_idx, self.stage_step, self.global_step)

    @functools.cached_property
    def val_data(self) -> TrainData | None:
        """Validation split, loaded once (None when the data has no val identities)."""
        try:
            return load_split(self.cfg.data.root, self.cfg.model.max_resolution, "val", self.cfg.data.cache_dir)
        except ValueError:
            return None

    # ------------------------------------------------------------ schedule
    @property
    def stage(self):
        return self.cfg.train.stages[min(self.stage_idx, len(self.cfg.train.stages) - 1)]

    @property
    def finished(self) -> bool:
        return self.stage_idx >= len(self.cfg.train.stages)

    def alpha(self) -> float:
        if self.finished:
            return 1.0
        s = self.stage
        if self.stage_idx == 0 or s.fade_steps == 0:
            return 1.0
        return min(1.0, self.stage_step / s.fade_steps)

    # ------------------------------------------------------------- training
    def run_judges(self) -> dict[str, float]:
        if self.judges_done:
            return {}
        t = self.cfg.train

        def report(step: int, m: dict[str, float]) -> None:
            if self.progress:
                self.progress(StepInfo("judges", step + 1, t.judge_steps, m))

        stats = train_judges(
            self.nets.classifier,
            self.nets.embedder,
            self.data,
            t.judge_steps,
            min(t.batch_size * 2, 128),
            self.device,
            t.seed + 1,
            report,
            t.judge_soften,
        )
        # The ensemble's other judges: expression only, each from its own seed (init and batches).
        for k, clf in enumerate(self.nets.extra_classifiers, start=1):
            extra = train_judges(
                clf, None, self.data, t.judge_steps, min(t.batch_size * 2, 128), self.device,
                t.seed + 1 + 1000 * k, report, t.judge_soften,
            )  # fmt: skip
            stats[f"expr_train_acc_{k}"] = extra["expr_train_acc"]
        self.judges_done = True
        self.save()
        return stats

    def run_stage(self) -> dict[str, Any]:
        """Train the current stage to its end (from wherever it was left) and return its metrics."""
        if not self.judges_done:
            self.run_judges()
        if self.finished:
            return {}
        stage = self.stage
        sums: dict[str, float] = defaultdict(float)
        count = 0
        started = time.perf_counter()
        while self.stage_step < stage.steps:
            self._scale_lr(stage.lr_scale(self.stage_step))
            m = self.train_step(stage.resolution, self.alpha())
            self.stage_step += 1
            self.global_step += 1
            for k, v in m.items():
                sums[k] += v
            count += 1
            if self.global_step % 25 == 0:
                self.history.append({"step": self.global_step, "resolution": stage.resolution, **m})
            if self.progress:
                self.progress(StepInfo(f"stage-{stage.resolution}", self.stage_step, stage.steps, m))
            if self.stage_step % self.cfg.train.checkpoint_every == 0 and self.stage_step < stage.steps:
                self.save()
        summary: dict[str, Any] = {"resolution": stage.resolution, "steps": stage.steps}
        summary.update({k: v / max(count, 1) for k, v in sums.items()})
        summary["seconds"] = time.perf_counter() - started
        summary.update(self.quick_eval(stage.resolution))
        self.stage_metrics.append(summary)
        self.stage_idx += 1
        self.stage_step = 0
        if self.finished:
            self.finalize()
        self.save()
        self.save(f"stage-{stage.resolution:04d}.pt")
        if self.finished:
            self.save(FINAL)
        return summary

    def _scale_lr(self, scale: float) -> None:
        for opt in (self.opt_g, self.opt_d):
            for group in opt.param_groups:
                # The configured lr, kept in the group so it travels with the optimiser's checkpoint
                # (a checkpoint from before stage decay existed holds the configured lr itself).
                base = group.setdefault("base_lr", group["lr"])
                group["lr"] = base * scale

    def finalize(self) -> None:
        """After the last stage: target codes, and the independent judges used for scoring."""
        from pipeline.judging import train_eval_judges

        if not self.is_main:  # other ranks never save, so the codes and eval judges would be unused
            return
        self.codes = fit_target_codes(self.nets.encoder, self.data, self.cfg.model.num_classes, self.device)
        if not self.eval_judges:

            def report(step: int, m: dict[str, float]) -> None:
                if self.progress:
                    self.progress(StepInfo("eval judges", step + 1, self.cfg.train.judge_steps, m))

            self.eval_judges = train_eval_judges(self.cfg, self.data, self.device, report)
        self.calibration = _calibrate(self.cfg, self.state_dict(), self.device)

    def train(self) -> Path:
        self.run_judges()
        while not self.finished:
            self.run_stage()
        return self.ckpt_dir / FINAL

    @torch.no_grad()
    def sample_grid(self, path: Path, n_identities: int = 6) -> Path:
        """Identities x expressions grid with the EMA generator at the current (or last) stage."""
        from pipeline.train.codes import expression_target
        from pipeline.train.grids import expression_grid, save_png

        full = self.cfg.model.max_resolution
        res = self.cfg.train.stages[max(self.stage_idx - 1, 0)].resolution  # the last stage trained
        data = self.val_data or self.data
        # One image per identity, preferring neutral ones, so the grid shows real swaps.
        order = torch.argsort(data.labels, stable=True)
        seen: dict[int, int] = {}
        for i in order.tolist():
            seen.setdefault(int(data.identity[i]), i)
        idx = torch.tensor(list(seen.values())[:n_identities])
        src = data.batch(idx, full, 1.0, self.device)
        self.nets.encoder.eval()
        w_id, _ = self.nets.encoder(src)
        if self.codes:
            k = self.cfg.model.num_classes
            exp = expression_target(
                {k2: v.to(self.device) for k2, v in self.codes.items()},
                torch.arange(k, device=self.device),
                torch.ones(k, device=self.device),
            )
        else:
            exp = reference_expression_codes(self.nets, self.data, self.device, full)
        names = [data.identity_names[int(data.identity[i])] for i in idx]
        return save_png(expression_grid(self.nets.generator_ema, src, w_id, exp, res, names), path)

    def _check_finite(self, metrics: dict[str, torch.Tensor]) -> dict[str, float]:
        out = {}
        for k, v in metrics.items():
            val = float(v.detach())
            if not math.isfinite(val):
                raise TrainingDiverged(
                    f"step {self.global_step + 1} (stage {self.stage.resolution} px): loss {k} is {val}; "
                    f"last good checkpoint kept at {self.ckpt_dir / LAST}"
                )
            out[k] = val
        return out

    def train_step(self, res: int, alpha: float) -> dict[str, float]:
        # Autocast covers forward passes and losses; backward follows the forward's dtypes.
        with torch.autocast(
            self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None
        ):
            return self._train_step(res, alpha)

    def _train_step(self, res: int, alpha: float) -> dict[str, float]:
        n, t, w = self.train_nets, self.cfg.train, self.cfg.train.loss
        dev = self.device
        b = self.stage.batch_size or t.batch_size
        idx = self.sample_rows(b)
        full = self.cfg.model.max_resolution
        # Swap targets: the sources' own expressions permuted within the batch (no extra encoder
        # pass), or with train.balanced_targets rows of their own, encoded beside the sources.
        perm = None if t.balanced_targets else torch.randperm(b, generator=self.gen)
        donor = self.sample_targets(b) if perm is None else idx[perm]
        y = self.data.labels[idx].to(dev)
        y_sw = self.data.labels[donor].to(dev)
        x_full = self.data.batch(idx, full, 1.0, dev)
        x = self.data.batch(idx, res, alpha, dev)

        n.encoder.train()
        n.generator.train()
        if perm is None:
            w_id, w_exp_all = n.encoder(torch.cat([x_full, self.data.batch(donor, full, 1.0, dev)]))
            w_id, w_exp, w_exp_sw = w_id[:b], w_exp_all[:b], w_exp_all[b:]
        else:
            w_id, w_exp = n.encoder(x_full)
            w_exp_sw = w_exp[perm.to(dev)]
        # Swap truths: each source's person and session with the donor's expression (procedural data).
        # Loaded whenever any term reads them, so no truth-based option is silently skipped.
        truth_full, valid, w_id_truth = None, None, None
        # perceptual uses them where there are any (and reconstructions otherwise).
        needs_truth = any(getattr(w, k) > 0 for k in TRUTH_TERMS) or w.perceptual > 0 or t.cross_expression_map
        if self.data.truth_key and needs_truth:
            rows = self.data.truth_rows(idx, donor)
            valid = (rows >= 0).to(dev)
            if valid.any():
                truth_full = self.data.batch(rows[valid.cpu()], self.cfg.model.max_resolution, 1.0, dev)
                if w.map_invariance > 0 or t.cross_expression_map:
                    w_id_truth, _ = n.encoder(truth_full)
        w_id_rec = w_id
        if t.cross_expression_map and w_id_truth is not None:
            w_id_rec = _with_other_map(w_id, w_id_truth, valid, self.cfg.model.id_dim)
        # Reconstructions are the plain RGB (what novel identities, which have no photo, get); with an
        # edit mask the swaps are composited over their source, and the raw RGB is kept for its own loss.
        fake_rec = n.generator(w_id_rec, w_exp, res, alpha)
        fake_sw, raw_sw, mask_sw = n.generator(w_id, w_exp_sw, res, alpha, source=x, with_parts=True)

        # ---- discriminator
        n.discriminator.requires_grad_(True)
        r1_every = 4
        do_r1 = w.r1 > 0 and self.global_step % r1_every == 0
        x_d = x.detach().requires_grad_(do_r1)
        d_real, cls_real = n.discriminator(x_d, res, alpha)
        d_fake, _ = n.discriminator(torch.cat([fake_rec, fake_sw]).detach(), res, alpha)
        loss_d = L.d_logistic(d_real, d_fake) + w.aux_cls * F.cross_entropy(cls_real, y)
        terms_d = {"d_adv": loss_d}
        if do_r1:
            r1 = L.r1_penalty(d_real, x_d)
            loss_d = loss_d + 0.5 * w.r1 * r1_every * r1
            terms_d["r1"] = r1
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self._clip(self.opt_d)
        self.opt_d.step()

        # ---- generator, encoder, feedback
        n.discriminator.requires_grad_(False)
        d_fake_g, cls_fake = n.discriminator(torch.cat([fake_rec, fake_sw]), res, alpha)
        terms: dict[str, torch.Tensor] = {}
        terms["g_adv"] = L.g_nonsaturating(d_fake_g)
        terms["g_cls"] = F.cross_entropy(cls_fake, torch.cat([y, y_sw]))
        terms["recon"] = F.l1_loss(fake_rec, x)
        up_sw = _to_full(fake_sw, self.cfg.model.max_resolution)
        swap_logits, swap_feats = n.classifier.forward_with_features(up_sw)
        terms["swap_cls"] = F.cross_entropy(swap_logits, y_sw)
        if len(n.extra_classifiers):
            # Every judge must be convinced (mean of their losses, not the loss of their mean): what
            # fools one judge's quirks does not pay, what any judge recognises does.
            others = [F.cross_entropy(clf(up_sw), y_sw) for clf in n.extra_classifiers]
            terms["swap_cls"] = torch.stack([terms["swap_cls"], *others]).mean()
        terms["identity"] = L.identity_loss(n.embedder, up_sw, x_full)
        fb_sw = n.feedback(fake_sw)
        fb_rec = n.feedback(fake_rec)
        terms["latent"] = L.latent_recovery(fb_sw, w_id, w_exp_sw) + L.latent_recovery(fb_rec, w_id_rec, w_exp)
        # Cycle: the identity recovered from the swap, with the source expression, gives the source back.
        cyc = n.generator(fb_sw[0], w_exp, res, alpha, source=fake_sw)
        terms["cycle"] = F.l1_loss(cyc, x)
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
            terms["recon_ssim"] = L.ssim_loss(fake_rec, x)
            loss = loss + w.ssim * terms["recon_ssim"]
        truth = downsample(truth_full, res, alpha) if truth_full is not None else None
        if truth is not None and w.swap_truth > 0:
            # With an edit mask the raw RGB is held to the truth too: novel identities have no source.
            swaps = {"": fake_sw} if mask_sw is None else {"": fake_sw, "_raw": raw_sw}
            for suffix, render in swaps.items():
                terms[f"swap_truth{suffix}"] = F.l1_loss(render[valid], truth)
                loss = loss + w.swap_truth * terms[f"swap_truth{suffix}"]
                if use_ssim:
                    terms[f"swap_ssim{suffix}"] = L.ssim_loss(render[valid], truth)
                    loss = loss + w.ssim * terms[f"swap_ssim{suffix}"]
        if truth is not None and w.swap_change > 0:
            terms["swap_change"] = L.changed_pixels_l1(fake_sw[valid], truth, x[valid])
            loss = loss + w.swap_change * terms["swap_change"]
        if w.perceptual > 0:
            terms["perceptual"] = self._perceptual(fake_rec, x, swap_feats, valid, truth)
            loss = loss + w.perceptual * terms["perceptual"]
        if w_id_truth is not None and w.map_invariance > 0:  # the config refuses it without a spatial code
            terms["map_inv"] = L.map_invariance(w_id[valid], w_id_truth, self.cfg.model.id_dim)
            loss = loss + w.map_invariance * terms["map_inv"]
        if mask_sw is not None:
            # GANimation's mask penalty: where the source already looks right, keep its pixels.
            terms["mask"] = torch.sigmoid(mask_sw).mean()
            loss = loss + w.mask * terms["mask"]
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        self._clip(self.opt_g)
        self.opt_g.step()
        # EMA warm-up per stage: a fixed 0.999 would average in the untrained layers that every
        # new resolution adds for ~1000 steps; ramping the decay follows them quickly at first.
        decay = min(t.ema_decay, (1.0 + self.stage_step) / (10.0 + self.stage_step))
        update_ema(n.generator_ema, n.generator, decay)
        metrics = self._check_finite({**terms_d, **terms, "loss_g": loss})
        metrics["swap_acc"] = float((swap_logits.argmax(1) == y_sw).float().mean())
        return metrics

    def _perceptual(
        self,
        fake_rec: torch.Tensor,
        x: torch.Tensor,
        swap_feats: list[torch.Tensor],
        valid: torch.Tensor | None,
        truth: torch.Tensor | None,
    ) -> torch.Tensor:
        """Expression-judge feature distance of reconstructions to their inputs and, where the data
        has them, of swaps to their truths. Targets are taken at the stage's resolution and scaled up
        like the renders, so a low-resolution stage is not asked for detail it cannot draw. The judge
        is frozen; only the renders get gradients."""
        clf, full = self.train_nets.classifier, self.cfg.model.max_resolution
        _, rec_feats = clf.forward_with_features(_to_full(fake_rec, full))
        with torch.no_grad():
            _, real_feats = clf.forward_with_features(_to_full(x, full))
        dist = L.perceptual_distance(rec_feats, real_feats)
        if truth is not None and valid is not None:
            with torch.no_grad():
                _, truth_feats = clf.forward_with_features(_to_full(truth, full))
            dist = dist + L.perceptual_distance([f[valid] for f in swap_feats], truth_feats)
        return dist

    def sample_rows(self, b: int) -> torch.Tensor:
        """Training rows for one step: uniform over images, or over classes with train.balanced_classes.

        Balanced, every expression (as source and, through the in-batch permutation, as swap target;
        `sample_targets` draws targets of their own with train.balanced_targets) is seen equally often; the procedural data has one neutral image per 12 expressive ones, and
        with uniform rows the default recipe's neutral swaps are judged neutral only 30% of the time.
        Measured (default recipe, 64 px stage 2100 steps, balanced): neutral 0.30 -> 0.46 but sad
        0.96 -> 0.68, overall 0.886 -> 0.870; so it stays off by default (useful for skewed photo sets).
        """
        if not self.cfg.train.balanced_classes:
            return torch.randint(0, self.data.n, (b,), generator=self.gen)
        return torch.multinomial(self._row_weights, b, replacement=True, generator=self.gen)

    def sample_targets(self, b: int) -> torch.Tensor:
        """Swap targets (donor rows) uniform over expression classes (`train.balanced_targets`).

        With uniform rows neutral, one image in 13 of the procedural data, is the rarest target (half
        as often as any other class) and the weakest class of the renders; balancing only the targets
        leaves the sources, and so reconstruction and identity, as the data has them.
        """
        return torch.multinomial(self._row_weights, b, replacement=True, generator=self.gen)

    @functools.cached_property
    def _row_weights(self) -> torch.Tensor:
        counts = torch.bincount(self.data.labels).double()
        return (1.0 / counts)[self.data.labels]

    def _clip(self, opt: torch.optim.Optimizer) -> None:
        # One bad batch can otherwise blow the unconstrained codes up (seen at the 32 px stage of an
        # early recipe: latent loss 4e4 in one step, never recovered).
        if self.cfg.train.grad_clip:
            params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, self.cfg.train.grad_clip)

    @torch.no_grad()
    def quick_eval(self, res: int) -> dict[str, float]:
        """Cheap per-stage check on validation identities with the EMA generator."""
        if self.val_data is None:
            return {}
        return swap_check(self.nets, self.val_data, res, self.device, self.cfg.model.max_resolution)


def _with_other_map(w_id: torch.Tensor, w_id_other: torch.Tensor, valid: torch.Tensor, vector_dim: int) -> torch.Tensor:
    """w_id with its spatial map replaced, where `valid`, by the map of another expression's image.

    With train.cross_expression_map the reconstruction is drawn from the source's vector codes and the
    map of the same person and session showing another expression, so whatever expression the map
    holds is never the one to draw; without it, reconstruction rewards copying the map's mouth and
    brows, which then leak into every swap (the 16x16x4 run: sad swaps judged sad 22% of the time).
    """
    maps = w_id[:, vector_dim:].clone()
    maps[valid] = w_id_other[:, vector_dim:]
    return torch.cat([w_id[:, :vector_dim], maps], dim=1)


def _calibrate(cfg: Config, state: dict[str, Any], device: torch.device) -> dict[str, Any] | None:
    """Real-val threshold calibration; None (with the reason logged) when there is no val split."""
    from pipeline.calibration import calibrate_thresholds

    try:
        return calibrate_thresholds(cfg, state, device)
    except ValueError as exc:  # no val split, or too few images to calibrate on
        return {"error": str(exc)}


def _to_full(x: torch.Tensor, full: int) -> torch.Tensor:
    return x if x.shape[-1] == full else F.interpolate(x, size=(full, full), mode="bilinear", align_corners=False)


@torch.no_grad()
def swap_check(
    nets: Networks, data: TrainData, res: int, device: torch.device, full: int, n: int = 64
) -> dict[str, float]:
    """Reconstruction L1 and swap expression accuracy (training judge) on up to n images."""
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(data.n, generator=g)[: min(n, data.n)]
    perm = torch.randperm(len(idx), generator=g)
    x_full = data.batch(idx, full, 1.0, device)
    nets.encoder.eval()
    w_id, w_exp = nets.encoder(x_full)
    rec = nets.generator_ema(w_id, w_exp, res, 1.0)
    sw = nets.generator_ema(w_id, w_exp[perm.to(device)], res, 1.0, source=x_full)  # composite() resizes it
    y_sw = data.labels[idx][perm].to(device)
    acc = (nets.classifier(_to_full(sw, full)).argmax(1) == y_sw).float().mean()
    recon = F.l1_loss(rec, data.batch(idx, res, 1.0, device))
    return {"val_recon_l1": float(recon), "val_swap_acc_train_judge": float(acc)}


@torch.no_grad()
def reference_expression_codes(nets: Networks, data: TrainData, device: torch.device, full: int) -> torch.Tensor:
    """w_exp of one training image per class at its highest intensity (targets before codes exist)."""
    rows = []
    for c in range(int(data.labels.max()) + 1):
        mask = data.labels == c
        top = data.intensity_code[mask].max()
        rows.append(int(torch.nonzero(mask & (data.intensity_code == top))[0]))
    nets.encoder.eval()
    return nets.encoder(data.batch(torch.tensor(rows), full, 1.0, device))[1]

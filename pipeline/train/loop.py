"""The training loop: judges first, then one progressive stage at a time, resumable at any step.

`Trainer` holds the whole state. Every `checkpoint_every` steps (and at the end of each stage) it
writes `checkpoints/last.pt` atomically; a new `Trainer` on the same output folder resumes from
it and continues the same schedule: same stage, step, fade-in alpha, optimiser moments, EMA and
random-number state.
"""

from __future__ import annotations

import contextlib
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

from pipeline.calibration import calibrate_thresholds
from pipeline.config import Config, config_to_dict
from pipeline.core.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from pipeline.core.codes import expression_target, fit_target_codes
from pipeline.core.data import TrainData, dataset_key, downsample, load_split
from pipeline.core.device import resolve_device
from pipeline.core.legacy import checkpoint_config
from pipeline.core.networks import Networks, autocast_dtype, build_networks, update_ema
from pipeline.judges import judge_batch, train_eval_judges, train_judges, train_panel_members
from pipeline.locks import WriterLock, writer_lock
from pipeline.train.grids import expression_grid, save_png
from pipeline.train.objective import Batch, DecouplingObjective, to_full

LAST = "last.pt"
# Settings that change where or how fast a run computes, not what it learns: a run may resume with others.
# precision is among them: weights and optimiser state are float32 either way.
SPEED_SETTINGS = ("out_dir", "device", "num_threads", "channels_last", "precision", "cache_dir")
# Loss terms that exist only where the data holds each swap's true image (procedural data).
TRUTH_TERMS = ("swap_truth",)
FINAL = "final.pt"


def run_folder_lock(out_dir: Path) -> contextlib.AbstractContextManager[WriterLock]:
    """One training run per out_dir: held by `Trainer.train`, `run_training` and the train flow."""
    return writer_lock(Path(out_dir), "training")


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
        self.device = resolve_device(cfg.train.device, "train.device")
        self.amp_dtype = autocast_dtype(cfg.train.precision, self.device)
        self.data = load_split(cfg.data.root, cfg.model.max_resolution, "train", cfg.data.cache_dir)
        present = int(self.data.labels.max()) + 1
        n_cls = len(set(self.data.labels.tolist()))
        if n_cls < cfg.model.num_classes or present > cfg.model.num_classes:
            raise ValueError(
                f"{cfg.data.root}: training split has {n_cls} expression classes but model.num_classes is "
                f"{cfg.model.num_classes}"
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
        self.train_nets = self.nets
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

    @property
    def train_nets(self) -> Networks:
        return self._train_nets

    @train_nets.setter
    def train_nets(self, nets: Networks) -> None:
        self._train_nets = nets
        self.objective = DecouplingObjective(nets, self.cfg)

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
        saved_cfg = config_to_dict(checkpoint_config(ckpt, str(path), resume=True))
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
            for judge in (self.nets.classifier, self.nets.embedder):
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
            judge_batch(self.cfg),
            self.device,
            t.seed + 1,
            report,
            t.judge_soften,
        )
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

        if not self.is_main:  # other ranks never save, so the codes and eval judges would be unused
            return
        self.codes = fit_target_codes(self.nets.encoder, self.data, self.cfg.model.num_classes, self.device)
        if not self.eval_judges:

            def report(step: int, m: dict[str, float]) -> None:
                if self.progress:
                    self.progress(StepInfo("eval judges", step + 1, self.cfg.train.judge_steps, m))

            self.eval_judges = train_eval_judges(self.cfg, self.data, self.device, report)
        if self.cfg.train.judge_panel > 1 and "panel" not in self.eval_judges:
            self.eval_judges["panel"] = train_panel_members(
                self.cfg, self.data, self.device, self.cfg.train.judge_panel
            )
        self.calibration = _calibrate(self.cfg, self.state_dict(), self.device)

    def train(self) -> Path:
        with run_folder_lock(self.out):
            self.run_judges()
            while not self.finished:
                self.run_stage()
        return self.ckpt_dir / FINAL

    @torch.no_grad()
    def sample_grid(self, path: Path, n_identities: int = 6) -> Path:
        """Identities x expressions grid with the EMA generator at the current (or last) stage."""

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
        batch = self.sample_batch(self.stage.batch_size or self.cfg.train.batch_size, res, alpha)
        renders = self.objective.render(batch, res, alpha)
        terms_d: dict[str, torch.Tensor] = {}
        if self.cfg.train.loss.adv > 0:  # without an adversary the discriminator is never trained
            with_r1 = self.cfg.train.loss.r1 > 0 and self.global_step % self.objective.R1_EVERY == 0
            loss_d, terms_d = self.objective.discriminator_phase(batch, renders, res, alpha, with_r1)
            self._optimise(self.opt_d, loss_d)
        loss_g, terms_g = self.objective.generator_phase(batch, renders, res, alpha)
        self._optimise(self.opt_g, loss_g)
        # EMA warm-up per stage: a fixed decay would average in the untrained layers that every new
        # resolution adds for many steps; ramping the decay follows them quickly at first.
        decay = min(self.cfg.train.ema_decay, (1.0 + self.stage_step) / (10.0 + self.stage_step))
        update_ema(self.train_nets.generator_ema, self.train_nets.generator, decay)
        swap_acc = float(terms_g.pop("swap_acc"))
        return {**self._check_finite({**terms_d, **terms_g, "loss_g": loss_g}), "swap_acc": swap_acc}

    def _optimise(self, opt: torch.optim.Optimizer, loss: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        loss.backward()
        self._clip(opt)
        opt.step()

    def sample_batch(self, b: int, res: int, alpha: float) -> Batch:
        """Rows uniform over images; swap targets the sources permuted within the batch (no extra
        encoder pass) or, with train.balanced_targets, rows of their own; and the swaps' truths."""
        dev, full, data = self.device, self.cfg.model.max_resolution, self.data
        idx = torch.randint(0, data.n, (b,), generator=self.gen)
        perm = None if self.cfg.train.balanced_targets else torch.randperm(b, generator=self.gen)
        donor = self.sample_targets(b) if perm is None else idx[perm]
        batch = Batch(
            x_full=data.batch(idx, full, 1.0, dev),
            x=data.batch(idx, res, alpha, dev),
            y=data.labels[idx].to(dev),
            y_sw=data.labels[donor].to(dev),
            perm=perm,
            donor_full=data.batch(donor, full, 1.0, dev) if perm is None else None,
        )
        # Truths: each source's person and session with the target's expression (procedural data).
        if data.truth_key and any(getattr(self.cfg.train.loss, k) > 0 for k in TRUTH_TERMS):
            rows = data.truth_rows(idx, donor)
            valid = (rows >= 0).to(dev)
            if valid.any():
                batch.valid = valid
                batch.truth = downsample(data.batch(rows[valid.cpu()], full, 1.0, dev), res, alpha)
        return batch

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
        # One bad batch can otherwise blow the unconstrained codes up, and they never recover.
        if self.cfg.train.grad_clip:
            params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, self.cfg.train.grad_clip)

    @torch.no_grad()
    def quick_eval(self, res: int) -> dict[str, float]:
        """Cheap per-stage check on validation identities with the EMA generator."""
        if self.val_data is None:
            return {}
        return swap_check(self.nets, self.val_data, res, self.device, self.cfg.model.max_resolution)


def _calibrate(cfg: Config, state: dict[str, Any], device: torch.device) -> dict[str, Any] | None:
    """Real-val threshold calibration; None (with the reason logged) when there is no val split."""

    try:
        return calibrate_thresholds(cfg, state, device)
    except ValueError as exc:  # no val split, or too few images to calibrate on
        return {"error": str(exc)}


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
    acc = (nets.classifier(to_full(sw, full)).argmax(1) == y_sw).float().mean()
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

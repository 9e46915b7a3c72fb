"""Train on synthetic, test on real (TSTR): does a generated dataset help a standard classifier?

One arm per training set, each training the same torchvision ResNet-18 (weights=None, 7 classes)
from the same seed for the same number of optimiser steps, and all evaluated on the real
`tstr.eval_split`:

    synthetic              generated images only (all_pass rows, plus tstr.synthetic_filters)
    real                   the real train split
    real+synthetic         both, sampled uniformly from their union
    real-small             the real train split limited to tstr.n_small_identities identities
    real-small+synthetic   that, plus the generated images
    real-shuffled          (tstr.control_shuffled) real train with permuted labels: should sit near
                           chance; if it does not, the evaluation leaks

A fixed step budget (not epochs) keeps arms comparable: a bigger training set does not get more
gradient steps just for being bigger. Plain library code: flows/tstr.py runs the arms as tasks.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import ConcatDataset, DataLoader, Dataset, RandomSampler

from pipeline.config import TstrConfig
from pipeline.core.device import resolve_device
from pipeline.downstream.dataset import LabelledDataset, ManifestDataset
from pipeline.expressions import EXPRESSIONS
from pipeline.io_utils import atomic_write_json, atomic_write_text

ALL_ARMS = ("synthetic", "real", "real+synthetic", "real-small", "real-small+synthetic")
CONTROL_ARM = "real-shuffled"
TABLE_CSV, TABLE_MD, PLOT_PNG, RESULT_JSON = "tstr.csv", "tstr.md", "tstr.png", "tstr.json"
ProgressFn = Callable[[str, int, int, float], None]  # (arm, step, total, loss)


class TstrError(ValueError):
    """Inputs that make a TSTR comparison meaningless (no images, no test split...)."""


@dataclass(frozen=True)
class ArmResult:
    arm: str
    n_train: int
    n_real: int
    n_synthetic: int
    n_real_identities: int
    accuracy: float
    macro_f1: float
    per_class_accuracy: dict[str, float]
    final_loss: float
    seconds: float

    def row(self) -> dict[str, Any]:
        return {
            "arm": self.arm,
            "accuracy": round(self.accuracy, 4),
            "macro_f1": round(self.macro_f1, 4),
            "n_train": self.n_train,
            "n_real": self.n_real,
            "n_synthetic": self.n_synthetic,
            "n_real_identities": self.n_real_identities,
            "final_loss": round(self.final_loss, 4),
            "seconds": round(self.seconds, 1),
        }


def build_classifier(num_classes: int = len(EXPRESSIONS)) -> torch.nn.Module:
    """The standard classifier of every arm: torchvision ResNet-18, random init (no downloads)."""
    from torchvision.models import resnet18

    return resnet18(weights=None, num_classes=num_classes)


class _Shuffled(Dataset):
    """A dataset with its labels permuted once (fixed seed): the control arm."""

    def __init__(self, base: LabelledDataset, seed: int) -> None:
        self.base = base
        self.perm = np.random.default_rng(seed).permutation(base.labels)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image, _ = self.base[i]
        return image, int(self.perm[i])


def small_identities(real: Path, n: int, seed: int) -> list[str]:
    """n real training identities, drawn with `seed` (same draw for both small arms)."""
    ds = LabelledDataset(real, split="train")
    ids = sorted(ds.frame["identity"].unique())
    if n >= len(ids):
        return ids
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(ids, size=n, replace=False).tolist())


def arm_dataset(arm: str, synthetic: Path | None, real: Path, cfg: TstrConfig) -> tuple[Dataset, dict[str, int]]:
    """The training set of one arm and its counts."""
    size = cfg.image_size
    parts: list[Dataset] = []
    counts = {"n_real": 0, "n_synthetic": 0, "n_real_identities": 0}
    base = arm.removesuffix("+synthetic")
    if base in ("real", "real-small", CONTROL_ARM):
        ids = small_identities(real, cfg.n_small_identities, cfg.seed) if base == "real-small" else None
        ds = LabelledDataset(real, split="train", identities=ids, image_size=size)
        if len(ds) == 0:
            raise TstrError(f"{real}: the real train split has no images")
        counts["n_real"] = len(ds)
        counts["n_real_identities"] = int(ds.frame["identity"].nunique())
        parts.append(_Shuffled(ds, cfg.seed) if base == CONTROL_ARM else ds)
    if arm == "synthetic" or arm.endswith("+synthetic"):
        if synthetic is None:
            raise TstrError(f"arm {arm!r} needs a synthetic dataset")
        syn = ManifestDataset(
            synthetic, filters=cfg.synthetic_filters or None, require_pass=cfg.require_pass, image_size=size
        )
        if len(syn) == 0:
            raise TstrError(f"{synthetic}: no synthetic images left after require_pass/synthetic_filters")
        counts["n_synthetic"] = len(syn)
        parts.append(syn)
    if not parts:
        raise TstrError(f"unknown arm {arm!r}; expected one of {[*ALL_ARMS, CONTROL_ARM]}")
    return (parts[0] if len(parts) == 1 else ConcatDataset(parts)), counts


def _device(name: str) -> torch.device:
    try:
        return resolve_device(name, "tstr.device")
    except ValueError as exc:
        raise TstrError(str(exc)) from None


def _seed_worker(worker_id: int) -> None:
    # Each DataLoader worker gets a distinct, reproducible numpy seed (torch seeds itself per worker).
    np.random.seed(torch.initial_seed() % 2**32)


def train_arm(
    arm: str, synthetic: Path | None, real: Path, cfg: TstrConfig, progress: ProgressFn | None = None
) -> ArmResult:
    """Train the classifier on one arm's data and evaluate it on the real eval split."""
    started = time.perf_counter()
    device = _device(cfg.device)
    train_ds, counts = arm_dataset(arm, synthetic, real, cfg)
    test_ds = LabelledDataset(real, split=cfg.eval_split, image_size=cfg.image_size)
    if len(test_ds) == 0:
        raise TstrError(f"{real}: split {cfg.eval_split!r} has no images to evaluate on")

    torch.manual_seed(cfg.seed)  # same initial weights in every arm: only the data differs
    model = build_classifier().to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, cfg.steps) / cfg.steps))
    )
    sampler = RandomSampler(
        train_ds,
        replacement=True,
        num_samples=cfg.steps * cfg.batch_size,
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    loader = DataLoader(
        train_ds,
        batch_size=cfg.batch_size,
        sampler=sampler,
        num_workers=cfg.num_workers,
        worker_init_fn=_seed_worker,
        persistent_workers=False,
        pin_memory=device.type == "cuda",
        drop_last=False,
    )
    flip_gen = torch.Generator().manual_seed(cfg.seed + 1)
    model.train()
    loss_ema = float("nan")
    for step, (x, y) in enumerate(loader, start=1):
        if cfg.augment:
            flip = torch.rand(x.shape[0], generator=flip_gen) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        x = (x.to(device, non_blocking=True) - 0.5) / 0.5
        loss = F.cross_entropy(model(x), y.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        val = float(loss.detach())
        loss_ema = val if math.isnan(loss_ema) else 0.9 * loss_ema + 0.1 * val
        if progress:
            progress(arm, step, cfg.steps, val)
    metrics = evaluate(model, test_ds, device, cfg.batch_size * 4)
    return ArmResult(
        arm=arm,
        n_train=len(train_ds),
        final_loss=loss_ema,
        seconds=time.perf_counter() - started,
        **counts,
        **metrics,
    )


@torch.no_grad()
def evaluate(model: torch.nn.Module, ds: Dataset, device: torch.device, batch_size: int) -> dict[str, Any]:
    """Accuracy, macro F1 over the classes present in `ds`, and per-class accuracy."""
    model.eval()
    k = len(EXPRESSIONS)
    conf = torch.zeros(k, k, dtype=torch.long)
    for x, y in DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=0):
        pred = model(((x - 0.5) / 0.5).to(device)).argmax(1).cpu()
        conf += torch.bincount(y * k + pred, minlength=k * k).reshape(k, k)
    tp = conf.diag().double()
    support, predicted = conf.sum(1).double(), conf.sum(0).double()
    present = support > 0
    f1 = torch.where(support + predicted > 0, 2 * tp / (support + predicted).clamp(min=1), torch.zeros_like(tp))
    per_class = {EXPRESSIONS[c]: float(tp[c] / support[c]) for c in range(k) if present[c]}
    return {
        "accuracy": float(tp.sum() / conf.sum().clamp(min=1)),
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class_accuracy": per_class,
    }


def arms_of(cfg: TstrConfig) -> list[str]:
    return [*cfg.arms, *([CONTROL_ARM] if cfg.control_shuffled else [])]


def write_report(results: list[ArmResult], out: Path, meta: dict[str, Any]) -> dict[str, Path]:
    """tstr.csv, tstr.md, tstr.png (bar plot) and tstr.json under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame([r.row() for r in results])
    atomic_write_text(out / TABLE_CSV, df.to_csv(index=False))
    atomic_write_text(out / TABLE_MD, _markdown(df, meta))
    plot_bars(df, out / PLOT_PNG, f"TSTR on real {meta.get('eval_split', 'test')} split")
    atomic_write_json(
        out / RESULT_JSON,
        {"meta": meta, "arms": [{**r.row(), "per_class_accuracy": r.per_class_accuracy} for r in results]},
    )
    return {"csv": out / TABLE_CSV, "markdown": out / TABLE_MD, "plot": out / PLOT_PNG, "json": out / RESULT_JSON}


def _markdown(df: pd.DataFrame, meta: dict[str, Any]) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    head = (
        f"## Train on synthetic, test on real\n\nEvaluated on the real `{meta.get('eval_split')}` split "
        f"({meta.get('n_eval')} images); ResNet-18, {meta.get('steps')} steps x batch {meta.get('batch_size')} "
        f"per arm, {meta.get('image_size')} px, seed {meta.get('seed')}. Chance: {meta.get('chance', 0):.3f}.\n\n"
    )
    return head + "\n".join(lines) + "\n"


def plot_bars(df: pd.DataFrame, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in flow workers
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.4 * len(df) + 2, 3.5), dpi=100)
    x = np.arange(len(df))
    ax.bar(x - 0.2, df["accuracy"], width=0.4, label="accuracy")
    ax.bar(x + 0.2, df["macro_f1"], width=0.4, label="macro F1")
    ax.set_xticks(x, df["arm"], rotation=20, ha="right")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def report_meta(real: Path, synthetic: Path | None, cfg: TstrConfig) -> dict[str, Any]:
    test = LabelledDataset(real, split=cfg.eval_split)
    counts = np.bincount(test.labels, minlength=len(EXPRESSIONS))
    return {
        "real": str(real),
        "synthetic": str(synthetic) if synthetic else None,
        "eval_split": cfg.eval_split,
        "n_eval": len(test),
        # Majority-class accuracy: the floor any arm should beat.
        "chance": float(counts.max() / max(counts.sum(), 1)),
        **cfg.model_dump(
            mode="json", include={"steps", "batch_size", "lr", "image_size", "seed", "n_small_identities"}
        ),
    }


def run_tstr(
    synthetic: Path | None, real: Path, cfg: TstrConfig, out: Path | None = None, progress: ProgressFn | None = None
) -> dict[str, Any]:
    """Every arm of `cfg`, then the report; returns {"rows": [...], "files": {...}}."""
    out = Path(out or cfg.out_dir)
    results = [train_arm(arm, synthetic, Path(real), cfg, progress) for arm in arms_of(cfg)]
    files = write_report(results, out, report_meta(Path(real), synthetic, cfg))
    return {"rows": [r.row() for r in results], "files": {k: str(v) for k, v in files.items()}}


def result_from_dict(d: dict[str, Any]) -> ArmResult:
    """Inverse of `ArmResult.__dict__` (flow tasks pass small dicts, not objects)."""
    return ArmResult(**d)


def result_to_dict(r: ArmResult) -> dict[str, Any]:
    return json.loads(json.dumps(r.__dict__))

"""Train on synthetic, test on real (TSTR): does a generated dataset help a standard classifier?

One arm per training set, each training the same torchvision ResNet-18 (weights=None, 7 classes)
for the same number of optimiser steps, and all evaluated on the real `tstr.eval_split`:

    synthetic                generated images only (all_pass rows, plus tstr.synthetic_filters)
    real-matched             the real images of those rows' identities, expressions and intensities,
                             row for row (pipeline/downstream/matched.py): what a perfect renderer gives
    real                     the real train split
    real+synthetic           both, sampled uniformly from their union
    real-small               the real train split limited to tstr.n_small_identities identities
    real-small+synthetic     that, plus the generated images
    real-small+real-matched  that, plus the real-matched images
    real-shuffled            (tstr.control_shuffled; first seed of each recipe) real train with permuted
                             labels: should sit near chance; if it does not, the evaluation leaks

Every arm runs once per recipe (pipeline/downstream/recipes.py) and seed (initial weights, sample
order, augmentation and the draw of the small identities); the report (pipeline/downstream/
tstr_report.py) gives mean ± std over seeds and the targets. A fixed step budget (not epochs) keeps
arms comparable. Each finished arm is a JSON file under OUT/arms/, written atomically: a rerun skips
it, and `--report-only` rebuilds the report from them. Plain library code: flows/tstr.py runs the
arms as tasks.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, get_args

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import ConcatDataset, DataLoader, Dataset, RandomSampler

from manifests.labels import read_labels
from manifests.status import require_published
from pipeline.config import TstrArm, TstrConfig
from pipeline.core.device import resolve_device
from pipeline.downstream.dataset import LabelledDataset, ManifestDataset
from pipeline.downstream.matched import MatchedSet, describe, match_real
from pipeline.downstream.recipes import train_transform
from pipeline.downstream.tstr_report import write_report
from pipeline.expressions import EXPRESSIONS
from pipeline.io_utils import atomic_write_json

ALL_ARMS: tuple[str, ...] = get_args(TstrArm)
CONTROL_ARM = "real-shuffled"
RUN_JSON, ARMS_DIR = "tstr_run.json", "arms"
# Settings that change what an arm measures: a resumed run must have the same ones.
RUN_KEY = (
    "steps",
    "batch_size",
    "lr",
    "weight_decay",
    "image_size",
    "n_small_identities",
    "synthetic_filters",
    "require_pass",
    "eval_split",
    "augment",
)
ProgressFn = Callable[[str, int, int, float], None]  # (arm, step, total, loss)


class TstrError(ValueError):
    """Inputs that make a TSTR comparison meaningless (no images, no test split...)."""


@dataclass(frozen=True)
class ArmResult:
    recipe: str
    seed: int
    arm: str
    n_train: int
    n_real: int
    n_synthetic: int
    n_matched: int
    n_real_identities: int
    accuracy: float
    macro_f1: float
    per_class_accuracy: dict[str, float]
    final_loss: float
    seconds: float

    def row(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k != "per_class_accuracy"}
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in d.items()}


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
    """n real training identities, drawn with `seed` (same draw for every small arm of that seed)."""
    ds = LabelledDataset(real, split="train")
    ids = sorted(ds.frame["identity"].unique())
    if n >= len(ids):
        return ids
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(ids, size=n, replace=False).tolist())


def synthetic_rows(synthetic: Path, cfg: TstrConfig, **kw: Any) -> ManifestDataset:
    """The synthetic arm's rows (require_pass, synthetic_filters); `kw`: transform, image_size."""
    syn = ManifestDataset(synthetic, filters=cfg.synthetic_filters or None, require_pass=cfg.require_pass, **kw)
    if len(syn) == 0:
        raise TstrError(f"{synthetic}: no synthetic images left after require_pass/synthetic_filters")
    return syn


def matched_set(synthetic: Path, real: Path, cfg: TstrConfig) -> MatchedSet:
    """The real-matched images of the synthetic arm's rows (pipeline.downstream.matched)."""
    return match_real(synthetic_rows(synthetic, cfg).frame, read_labels(real)[0], cfg.eval_split)


def _parts(arm: str) -> tuple[str | None, str | None]:
    """(real base, addition) of an arm name: 'real-small+synthetic' -> ('real-small', 'synthetic')."""
    if arm in ("synthetic", "real-matched"):
        return None, arm
    base, _, extra = arm.partition("+")
    return base, extra or None


def arm_dataset(
    arm: str, synthetic: Path | None, real: Path, cfg: TstrConfig, seed: int = 0, recipe: str = "plain"
) -> tuple[Dataset, dict[str, int]]:
    """The training set of one arm (images augmented by `recipe`) and its counts."""
    size = cfg.image_size
    tf = train_transform(recipe, size, flip=cfg.augment)
    base, extra = _parts(arm)
    if base not in (None, "real", "real-small", CONTROL_ARM) or extra not in (None, "synthetic", "real-matched"):
        raise TstrError(f"unknown arm {arm!r}; expected one of {[*ALL_ARMS, CONTROL_ARM]}")
    parts: list[Dataset] = []
    counts = {"n_real": 0, "n_synthetic": 0, "n_matched": 0, "n_real_identities": 0}
    identities: set[str] = set()
    if base is not None:
        ids = small_identities(real, cfg.n_small_identities, seed) if base == "real-small" else None
        ds = LabelledDataset(real, split="train", identities=ids, image_size=size, transform=tf)
        if len(ds) == 0:
            raise TstrError(f"{real}: the real train split has no images")
        counts["n_real"] = len(ds)
        identities |= set(ds.frame["identity"])
        parts.append(_Shuffled(ds, seed) if base == CONTROL_ARM else ds)
    if extra is not None and synthetic is None:
        raise TstrError(f"arm {arm!r} needs a synthetic dataset")
    if extra == "synthetic":
        syn = synthetic_rows(synthetic, cfg, transform=tf, image_size=size)  # type: ignore[arg-type]
        counts["n_synthetic"] = len(syn)
        parts.append(syn)
    elif extra == "real-matched":
        m = matched_set(synthetic, real, cfg)  # type: ignore[arg-type]
        if m.frame.empty:
            raise TstrError(f"{synthetic}: no row has a real image to match ({describe(m)})")
        counts["n_matched"] = len(m.frame)
        counts["n_real"] += len(m.frame)
        identities |= set(m.frame["identity"])
        parts.append(LabelledDataset.from_frame(real, m.frame, tf, image_size=size))
    counts["n_real_identities"] = len(identities)
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
    arm: str,
    synthetic: Path | None,
    real: Path,
    cfg: TstrConfig,
    progress: ProgressFn | None = None,
    *,
    seed: int = 0,
    recipe: str = "plain",
) -> ArmResult:
    """Train the classifier on one arm's data (one recipe, one seed) and evaluate it on the real eval split."""
    started = time.perf_counter()
    device = _device(cfg.device)
    train_ds, counts = arm_dataset(arm, synthetic, real, cfg, seed, recipe)
    test_ds = LabelledDataset(real, split=cfg.eval_split, image_size=cfg.image_size)
    if len(test_ds) == 0:
        raise TstrError(f"{real}: split {cfg.eval_split!r} has no images to evaluate on")

    torch.manual_seed(seed)  # same initial weights in every arm of a seed: only the data differs
    model = build_classifier().to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, cfg.steps) / cfg.steps))
    )
    sampler = RandomSampler(
        train_ds,
        replacement=True,
        num_samples=cfg.steps * cfg.batch_size,
        generator=torch.Generator().manual_seed(seed),
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
    model.train()
    loss_ema = float("nan")
    for step, (x, y) in enumerate(loader, start=1):
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
        recipe=recipe,
        seed=seed,
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


def jobs(cfg: TstrConfig) -> list[tuple[str, int, str]]:
    """Every (recipe, seed, arm) of `cfg`, in run order; the control runs on the first seed only."""
    out = [(r, s, a) for r in cfg.recipes for s in cfg.seeds for a in cfg.arms]
    if cfg.control_shuffled:
        out += [(r, cfg.seeds[0], CONTROL_ARM) for r in cfg.recipes]
    return out


def arm_path(out: Path, recipe: str, seed: int, arm: str) -> Path:
    return Path(out) / ARMS_DIR / recipe / f"seed{seed}" / f"{arm}.json"


def prepare_run(synthetic: Path | None, real: Path, cfg: TstrConfig, out: Path) -> dict[str, Any]:
    """Write (or check) OUT/tstr_run.json: the inputs and settings every finished arm under OUT shares.

    A rerun with other inputs or settings would mix incomparable arms: it is refused, naming them.
    """
    test = LabelledDataset(real, split=cfg.eval_split)
    if len(test) == 0:
        raise TstrError(f"{real}: split {cfg.eval_split!r} has no images to evaluate on")
    counts = np.bincount(test.labels, minlength=len(EXPRESSIONS))
    key = {
        "real": str(Path(real).resolve()),
        "synthetic": str(Path(synthetic).resolve()) if synthetic else None,
        **cfg.model_dump(mode="json", include=set(RUN_KEY)),
    }
    path = Path(out) / RUN_JSON
    if path.is_file():
        old = _read(path).get("key", {})
        diff = sorted(k for k in key if old.get(k) != key[k])
        if diff:
            raise TstrError(
                f"{out} holds arms of another TSTR run (differs in {', '.join(diff)}): use another --out or delete it"
            )
    meta = {
        "key": key,
        "eval_split": cfg.eval_split,
        "n_eval": len(test),
        # Majority-class accuracy: the floor any arm should beat.
        "chance": float(counts.max() / max(counts.sum(), 1)),
        "matched": describe(matched_set(synthetic, real, cfg)) if synthetic else None,
        **{k: key[k] for k in ("steps", "batch_size", "image_size")},
    }
    atomic_write_json(path, meta)
    return meta


def run_arm(
    recipe: str,
    seed: int,
    arm: str,
    synthetic: Path | None,
    real: Path,
    cfg: TstrConfig,
    out: Path,
    progress: ProgressFn | None = None,
) -> tuple[ArmResult, bool]:
    """(result, trained now): an arm already finished under OUT is read back, not trained again."""
    path = arm_path(out, recipe, seed, arm)
    if path.is_file():
        return result_from_dict(_read(path)), False
    result = train_arm(arm, synthetic, real, cfg, progress, seed=seed, recipe=recipe)
    atomic_write_json(path, result_to_dict(result))
    return result, True


def finished(out: Path) -> list[ArmResult]:
    """Every finished arm under OUT, in recipe, seed, arm order of the files."""
    return [result_from_dict(_read(p)) for p in sorted((Path(out) / ARMS_DIR).glob("*/seed*/*.json"))]


def report(out: Path, results: list[ArmResult] | None = None) -> dict[str, Any]:
    """The report of OUT from `results` (default: every finished arm there)."""
    out = Path(out)
    if not (out / RUN_JSON).is_file():
        raise TstrError(f"{out}: no TSTR run here ({RUN_JSON} missing)")
    results = finished(out) if results is None else results
    if not results:
        raise TstrError(f"{out}: no finished arms yet")
    meta = _read(out / RUN_JSON)
    runs = pd.DataFrame([{**r.row(), "per_class_accuracy": r.per_class_accuracy} for r in results])
    return write_report(runs, out, meta)


def run_tstr(
    synthetic: Path | None,
    real: Path,
    cfg: TstrConfig,
    out: Path | None = None,
    progress: ProgressFn | None = None,
    report_only: bool = False,
    allow_rejected: bool = False,
) -> dict[str, Any]:
    """Every (recipe, seed, arm) of `cfg` not finished yet, then the report.

    A synthetic set that is rejected or unfinished is refused (DatasetStatusError) unless `allow_rejected`.
    Returns {"rows": [every run], "summary": [...], "targets": [...], "files": {...}, "trained": n}.
    """
    out = Path(out or cfg.out_dir)
    results, trained = None, 0
    if synthetic is not None and not report_only:
        require_published(Path(synthetic), allow_rejected, "tstr")
    if not report_only:
        prepare_run(synthetic, Path(real), cfg, out)
        results = []
        for recipe, seed, arm in jobs(cfg):
            result, new = run_arm(recipe, seed, arm, synthetic, Path(real), cfg, out, progress)
            results.append(result)
            trained += new
    rep = report(out, results)
    return {
        "rows": [r.row() for r in (results if results is not None else finished(out))],
        "summary": rep["summary"].to_dict("records"),
        "targets": rep["targets"],
        "files": {k: str(v) for k, v in rep["files"].items()},
        "trained": trained,
    }


def _read(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def result_from_dict(d: dict[str, Any]) -> ArmResult:
    """Inverse of `result_to_dict` (flow tasks and result files hold small dicts, not objects)."""
    return ArmResult(**d)


def result_to_dict(r: ArmResult) -> dict[str, Any]:
    return asdict(r)

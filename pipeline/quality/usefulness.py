"""The usefulness gate: does a recogniser trained on the renders recognise real faces?

A fixed small recogniser (the expression judge's architecture, trained from scratch) is trained on a
sample of the passing renders and, with the same recipe and seed, on as many real training images
with the same label mix. Both are tested on the real validation split of the checkpoint's training
data (the test split stays untouched). The gate reads the ratio of the two accuracies: renders that
teach as much as real photos give 1.0, renders that teach nothing give about chance / real.

One recogniser trained on a few hundred images varies by about 0.1 in ratio with its seed, so the
gate trains several pairs (seeds ``seed, seed + 1, ...``: recogniser, render sample and real sample
all redrawn; the test images stay the same) and reads the mean ratio; the per-seed ratios go on record.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import multiclass_confusion_matrix

from manifests.layout import USEFULNESS_FILE as CACHE_FILE
from models.judges import ExpressionClassifier
from pipeline.cache import load_tensors, read_rgb_batch
from pipeline.core.data import to_model_range
from pipeline.expressions import EXPRESSIONS
from pipeline.io_utils import atomic_write_json
from pipeline.judges import augment


class UsefulnessNotComputed(ValueError):
    """The gate's inputs are missing (no validation split, no passing renders...)."""


@dataclass(frozen=True)
class UsefulnessSettings:
    max_images: int
    max_eval_images: int
    steps: int
    batch_size: int
    eval_split: str
    train_split: str
    seed: int
    recognisers: int = 1

    @classmethod
    def from_quality(cls, q: Any, seed: int) -> UsefulnessSettings:
        """The gate's settings from a `QualityConfig` (real training images are the comparison arm)."""
        return cls(
            q.usefulness_max_images,
            q.usefulness_max_eval_images,
            q.usefulness_steps,
            q.usefulness_batch_size,
            q.usefulness_split,
            "train",
            seed,
            q.usefulness_recognisers,
        )


@dataclass(frozen=True)
class UsefulnessResult:
    """Accuracies and ratio are means over the recognisers; confusion matrices are their summed counts."""

    accuracy_synthetic: float
    accuracy_real: float
    ratio: float
    chance: float
    n_train: int
    n_eval: int
    eval_split: str
    confusion_synthetic: list[list[int]]
    confusion_real: list[list[int]]
    ratios: list[float]

    @property
    def ratio_spread(self) -> float:
        """Largest minus smallest per-recogniser ratio (0 with one recogniser)."""
        return max(self.ratios) - min(self.ratios)

    def metrics(self) -> dict[str, Any]:
        """The figures the card and report carry (confusion matrices as row-per-true-class counts)."""
        return {f"usefulness_{k}": v for k, v in {**asdict(self), "ratio_spread": self.ratio_spread}.items()}


def passing_sample(df: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """Up to n passing renders, drawn with a fixed seed, in sample_id order."""
    ok = df[df["all_pass"].astype(bool)].sort_values("sample_id").reset_index(drop=True)
    if len(ok) > n:
        ok = ok.iloc[np.sort(np.random.default_rng(seed).permutation(len(ok))[:n])]
    return ok.reset_index(drop=True)


def matched_real_rows(frame: pd.DataFrame, split: str, labels: np.ndarray, seed: int) -> np.ndarray:
    """Rows of real `split` images with the same count per expression as `labels` (fewer where short)."""
    rng = np.random.default_rng(seed)
    rows = []
    for cls, count in zip(*np.unique(labels, return_counts=True), strict=True):
        pool = np.flatnonzero(((frame["split"] == split) & (frame["expression_index"] == cls)).to_numpy())
        rows.append(rng.permutation(pool)[: int(count)])
    return np.sort(np.concatenate(rows)) if rows else np.array([], dtype=np.int64)


def train_recogniser(images: torch.Tensor, labels: torch.Tensor, s: UsefulnessSettings) -> ExpressionClassifier:
    """The fixed recipe: the judge architecture from scratch, Adam with a one-cycle lr, the judges' augmentation."""
    torch.manual_seed(s.seed)  # same initial weights for both arms: only the data differs
    gen = torch.Generator().manual_seed(s.seed)
    net = ExpressionClassifier(len(EXPRESSIONS), input_size=images.shape[-1], channels=16).train()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=s.steps, pct_start=0.15)
    for _ in range(s.steps):
        idx = torch.randint(0, len(images), (min(s.batch_size, len(images)),), generator=gen)
        x = augment(to_model_range(images[idx], "cpu"), gen)
        loss = F.cross_entropy(net(x), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return net.eval()


@torch.no_grad()
def predict(net: ExpressionClassifier, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    return torch.cat(
        [net(to_model_range(images[i : i + batch_size], "cpu")).argmax(1) for i in range(0, len(images), batch_size)]
    )


def score_arm(
    images: torch.Tensor, labels: torch.Tensor, test: tuple[torch.Tensor, torch.Tensor], s: UsefulnessSettings
):
    """(accuracy on the test images, confusion matrix rows = true class)."""
    pred = predict(train_recogniser(images, labels, s), test[0])
    conf = multiclass_confusion_matrix(pred, test[1], num_classes=len(EXPRESSIONS))
    return float((pred == test[1]).float().mean()), conf.tolist()


def measure_usefulness(
    renders_root: Path, df: pd.DataFrame, data_root: Path, resolution: int, s: UsefulnessSettings, cache_dir=None
) -> UsefulnessResult:
    """Train on the renders and on matched real images, test both on the real `eval_split`; one pair per recogniser."""
    if passing_sample(df, 1, s.seed).empty:
        raise UsefulnessNotComputed("no passing render to train on")
    images, frame = load_tensors(Path(data_root), resolution, cache_dir)
    eval_rows = np.flatnonzero((frame["split"] == s.eval_split).to_numpy())
    if len(eval_rows) == 0:
        raise UsefulnessNotComputed(f"{data_root}/labels.parquet has no {s.eval_split!r} split to test on")
    if not (frame["split"] == s.train_split).any():
        raise UsefulnessNotComputed(f"{data_root}/labels.parquet has no {s.train_split!r} images to compare with")
    eval_rows = np.sort(np.random.default_rng(s.seed).permutation(eval_rows)[: s.max_eval_images])
    classes = frame["expression_index"].to_numpy().astype(np.int64)
    test = (images[torch.as_tensor(eval_rows)], torch.as_tensor(classes[eval_rows]))
    pairs = [
        _measure_pair(Path(renders_root), df, images, frame, classes, test, replace(s, seed=s.seed + k))
        for k in range(s.recognisers)
    ]
    syn, real = [p[0] for p in pairs], [p[1] for p in pairs]
    ratios = [a / b if b > 0 else math.nan for (a, _), (b, _) in zip(syn, real, strict=True)]
    chance = float(np.bincount(test[1].numpy(), minlength=len(EXPRESSIONS)).max() / len(test[1]))
    return UsefulnessResult(
        float(np.mean([a for a, _ in syn])),
        float(np.mean([a for a, _ in real])),
        float(np.mean(ratios)),
        chance,
        pairs[0][2],
        len(eval_rows),
        s.eval_split,
        np.sum([c for _, c in syn], axis=0).tolist(),
        np.sum([c for _, c in real], axis=0).tolist(),
        ratios,
    )


def _measure_pair(renders_root, df, images, frame, classes, test, s: UsefulnessSettings):
    """((accuracy, confusion) trained on renders, the same on matched real images, renders trained on)."""
    sample = passing_sample(df, s.max_images, s.seed)
    syn_labels = sample["expression_index"].to_numpy().astype(np.int64)
    syn = read_rgb_batch(renders_root, sample["file_name"].tolist())
    if syn.shape[-1] != images.shape[-1]:
        syn = F.interpolate(syn.float(), size=images.shape[-2:], mode="area").round().to(torch.uint8)
    real_rows = matched_real_rows(frame, s.train_split, syn_labels, s.seed)
    real_labels = torch.as_tensor(classes[real_rows])
    return (
        score_arm(syn, torch.as_tensor(syn_labels), test, s),
        score_arm(images[torch.as_tensor(real_rows)], real_labels, test, s),
        len(sample),
    )


def cache_key(df: pd.DataFrame, data_key: str, s: UsefulnessSettings) -> str:
    """Same passing renders, same real data, same settings: the same result (re-judging re-trains nothing)."""
    passing = sorted(df.loc[df["all_pass"].astype(bool), "sample_id"].astype(str))
    blob = json.dumps({"passing": passing, "data": data_key, "settings": asdict(s)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def cached_usefulness(staging: Path, key: str) -> UsefulnessResult | None:
    path = Path(staging) / CACHE_FILE
    try:
        got = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if got.get("key") != key:
        return None
    try:
        return UsefulnessResult(**got["result"])
    except TypeError:  # written by an older version: measure again
        return None


def store_usefulness(staging: Path, key: str, result: UsefulnessResult) -> None:
    atomic_write_json(Path(staging) / CACHE_FILE, {"key": key, "result": asdict(result)})

"""The outside expression judge: read renders with a network no training loss ever pushed on.

Every expression judge the generator trains against, and the panel that gates its renders, share
one architecture (the VGG-style trunk of `models.judges`) and, with `train.judge_soften`, learn to
forgive blur. A generator optimised against one of them can learn to fool the family rather than
draw the expression; a judge that forgives blur passes smears. This judge is neither: another
architecture (`OutsideExpressionJudge`, ShuffleNet V2), trained on the sharp real training photos
with ordinary augmentation only (shifts, flips, brightness and contrast; no blur, no resampling).

It depends on the data alone, not on a checkpoint: trained once per labelled dataset and cached
beside the tensor cache under the dataset's content key, so every checkpoint of that data is read
by the same judge.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from models import OutsideExpressionJudge
from pipeline.core.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from pipeline.core.data import TrainData, dataset_key, load_split
from pipeline.judges import augment, judge_accuracy

# Batches draw every class equally often: neutral is the rarest class of the procedural data, and a
# judge fitted to that prior reads real neutral faces as other classes (docs/experiments/outside_judge.md).
RECIPE = {"version": 2, "batch_size": 64, "lr": 2e-3, "seed": 7, "balanced": True}


def class_balanced_weights(labels: torch.Tensor) -> torch.Tensor:
    """Per-image sampling weights under which every class present is drawn equally often."""
    counts = torch.bincount(labels)
    return 1.0 / counts[labels].double()


@torch.enable_grad()  # evaluation calls this from inside its no-grad scope
def train_outside_judge(
    data: TrainData,
    num_classes: int,
    device: torch.device,
    steps: int,
    progress: Callable[[int, dict[str, float]], None] | None = None,
    recipe: dict | None = None,
) -> OutsideExpressionJudge:
    """Fit the judge on ``data`` (sharp images, ordinary augmentation); returned in eval mode, frozen."""
    recipe = recipe or RECIPE
    gen = torch.Generator().manual_seed(recipe["seed"])
    torch.manual_seed(recipe["seed"])
    judge = OutsideExpressionJudge(num_classes).to(device).train()
    opt = torch.optim.AdamW(judge.parameters(), lr=recipe["lr"], weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe["lr"], total_steps=steps, pct_start=0.15)
    res = data.images.shape[-1]
    weights = class_balanced_weights(data.labels) if recipe.get("balanced") else None
    acc = 0.0
    for step in range(steps):
        if weights is None:  # version 1: images drawn as the data falls
            idx = torch.randint(0, data.n, (recipe["batch_size"],), generator=gen)
        else:
            idx = torch.multinomial(weights, recipe["batch_size"], replacement=True, generator=gen)
        x = augment(data.batch(idx, res, 1.0, device), gen, soften=0.0)
        flip = (torch.rand(len(idx), generator=gen) < 0.5).to(device)
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        y = data.labels[idx].to(device)
        logits = judge(x)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        acc = 0.9 * acc + 0.1 * (logits.argmax(1) == y).float().mean().item()
        if progress is not None:
            progress(step, {"outside_loss": loss.item(), "expr_acc": acc})
    return judge.eval().requires_grad_(False)


def outside_judge_path(root: Path, resolution: int, steps: int, cache_dir: Path | None = None) -> Path:
    """Where the judge of a dataset is cached: named by its data, resolution and training recipe."""
    recipe = ",".join(f"{k}={v}" for k, v in sorted({**RECIPE, "steps": steps}.items()))
    key = hashlib.sha256(f"{dataset_key(root)}\n{resolution}\n{recipe}".encode()).hexdigest()[:16]
    return Path(cache_dir or Path(root) / ".cache") / f"outside-judge-r{resolution}-{key}.pt"


def load_outside_judge(
    root: Path,
    resolution: int,
    num_classes: int,
    device: torch.device,
    steps: int,
    cache_dir: Path | None = None,
    progress: Callable[[int, dict[str, float]], None] | None = None,
) -> tuple[OutsideExpressionJudge, dict[str, float]]:
    """The dataset's outside judge (trained and cached on first use) and its accuracy on the real val split."""
    path = outside_judge_path(root, resolution, steps, cache_dir)
    judge = OutsideExpressionJudge(num_classes)
    try:
        stored = load_checkpoint(path)
        judge.load_state_dict(stored["state"])
        return judge.to(device).eval().requires_grad_(False), dict(stored["stats"])
    except (CheckpointError, KeyError, RuntimeError):
        pass  # missing, truncated or from another torchvision: train it afresh
    train = load_split(root, resolution, "train", cache_dir)
    judge = train_outside_judge(train, num_classes, device, steps, progress)
    try:
        val = load_split(root, resolution, "val", cache_dir)
        stats = {"val_acc": judge_accuracy(judge, val, device)}
    except ValueError:  # no val split
        stats = {}
    save_checkpoint(path, {"state": judge.state_dict(), "stats": stats, "recipe": {**RECIPE, "steps": steps}})
    return judge, stats

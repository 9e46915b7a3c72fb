"""The judges: an expression classifier and an identity embedder trained on the real training split.

Two pairs. The training pair is frozen and gives the GAN loss terms (expression of swapped renders,
identity preservation). The independent pair starts from another seed and never gives the generator
a gradient, so renders are never graded by the very networks they were optimised against; training
stores it in the final checkpoint, and generation, evaluation and calibration load it from there.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from torch import nn

from models import ExpressionClassifier, IdentityEmbedder, JudgePanel
from pipeline.config import Config
from pipeline.core.data import TrainData

# The independent pair's seed is the training seed plus this; panel member k's, plus k times PANEL_SEED_STEP more.
SEED_OFFSET = 1000
PANEL_SEED_STEP = 100


def augment(x: torch.Tensor, gen: torch.Generator, soften: float = 0.0) -> torch.Tensor:
    """Small shifts and brightness/contrast jitter: judges must not key on exact pixels.

    With ``soften`` > 0, that share of the batch is also blurred (Gaussian, sigma 0.4-1.5 px) or
    resampled through a lower resolution (32-56 px at 64): without it the expression judge reads
    crisp edges, not expressions, so a render passes or fails by its sharpness, which SSIM and
    FID/KID already judge.
    """
    n = x.shape[0]
    shift = torch.randint(-2, 3, (2,), generator=gen).tolist()
    x = torch.roll(x, shifts=(shift[0], shift[1]), dims=(2, 3))
    gain = 1.0 + 0.15 * (torch.rand(n, 1, 1, 1, generator=gen) - 0.5)
    bias = 0.1 * (torch.rand(n, 1, 1, 1, generator=gen) - 0.5)
    x = (x * gain.to(x.device) + bias.to(x.device)).clamp(-1, 1)
    if soften > 0:
        pick = (torch.rand(n, generator=gen) < soften).to(x.device)
        x = torch.where(pick[:, None, None, None], soften_images(x, gen), x)
    return x


def soften_images(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """The batch blurred or resampled through a lower resolution, one random strength per call."""
    size = x.shape[-1]
    if torch.rand((), generator=gen) < 0.5:
        sigma = float(0.4 + 1.1 * torch.rand((), generator=gen))
        return TF.gaussian_blur(x, kernel_size=2 * math.ceil(2 * sigma) + 1, sigma=sigma)
    low = int(size * float(0.5 + 0.375 * torch.rand((), generator=gen)))
    down = F.interpolate(x, size=(low, low), mode="bilinear", antialias=True, align_corners=False)
    return F.interpolate(down, size=(size, size), mode="bilinear", align_corners=False)


def train_judges(
    classifier: nn.Module,
    embedder: nn.Module | None,
    data: TrainData,
    steps: int,
    batch_size: int,
    device: torch.device,
    seed: int,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    soften: float = 0.0,
) -> dict[str, float]:
    """Fit both judges jointly (same batches), or the classifier alone when ``embedder`` is None;
    returns final training accuracies.

    ``soften``: share of each batch blurred or resampled (`augment`), ``train.judge_soften``.
    """
    gen = torch.Generator().manual_seed(seed)
    nets = [classifier] if embedder is None else [classifier, embedder]
    for net in nets:
        net.train().to(device)
    opt = torch.optim.Adam([p for net in nets for p in net.parameters()], lr=2e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.15)
    res = data.images.shape[-1]
    acc_e = acc_i = 0.0
    for step in range(steps):
        idx = torch.randint(0, data.n, (batch_size,), generator=gen)
        x = augment(data.batch(idx, res, 1.0, device), gen, soften)
        y = data.labels[idx].to(device)
        ident = data.identity[idx].to(device)
        logits_e = classifier(x)
        loss = F.cross_entropy(logits_e, y)
        if embedder is not None:
            logits_i = embedder(x, labels=ident)  # CosFace margin while training
            loss = loss + F.cross_entropy(logits_i, ident)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        # Exponential averages of batch accuracy, for the progress line only.
        acc_e = 0.9 * acc_e + 0.1 * (logits_e.argmax(1) == y).float().mean().item()
        m = {"judge_loss": loss.item(), "expr_acc": acc_e}
        if embedder is not None:
            acc_i = 0.9 * acc_i + 0.1 * (logits_i.argmax(1) == ident).float().mean().item()
            m["id_acc"] = acc_i
        if on_step is not None:
            on_step(step, m)
    for net in nets:
        net.eval().requires_grad_(False)
    return {"expr_train_acc": acc_e, "id_train_acc": acc_i} if embedder is not None else {"expr_train_acc": acc_e}


@torch.no_grad()
def judge_accuracy(classifier: nn.Module, data: TrainData, device: torch.device, batch_size: int = 256) -> float:
    res = data.images.shape[-1]
    correct = 0
    for start in range(0, data.n, batch_size):
        idx = torch.arange(start, min(start + batch_size, data.n))
        pred = classifier(data.batch(idx, res, 1.0, device)).argmax(1).cpu()
        correct += int((pred == data.labels[idx]).sum())
    return correct / max(data.n, 1)


# ------------------------------------------------------------------ the independent pair


def build_expression_judge(cfg: Config) -> ExpressionClassifier:
    m = cfg.model
    return ExpressionClassifier(m.num_classes, input_size=m.max_resolution, channels=m.judge_channels)


def build_eval_judges(cfg: Config, n_identities: int) -> tuple[ExpressionClassifier, IdentityEmbedder]:
    m = cfg.model
    clf = build_expression_judge(cfg)
    emb = IdentityEmbedder(
        n_identities, embed_dim=m.judge_embed_dim, input_size=m.max_resolution, channels=m.judge_channels
    )
    return clf, emb


def judge_batch(cfg: Config) -> int:
    """The batch the training-time judges train at: twice the GAN's, at most 128."""
    return min(cfg.train.batch_size * 2, 128)


def eval_judge_batch(cfg: Config) -> int:
    """The batch the independent judges and the panel train at (a stored config without its own: the rule above)."""
    return cfg.train.eval_judge_batch_size or judge_batch(cfg)


def train_eval_judges(
    cfg: Config,
    data: TrainData,
    device: torch.device,
    progress: Callable[[int, dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    with _own_rng(device):
        torch.manual_seed(cfg.train.seed + SEED_OFFSET)  # their initial weights: the same judges for the same GAN
        clf, emb = build_eval_judges(cfg, len(data.identity_names))
        stats = train_judges(
            clf,
            emb,
            data,
            cfg.train.judge_steps,
            eval_judge_batch(cfg),
            device,
            cfg.train.seed + SEED_OFFSET,
            progress,
            cfg.train.judge_soften,
        )
    return {"classifier": clf.state_dict(), "embedder": emb.state_dict(), "stats": stats}


def _own_rng(device: torch.device) -> contextlib.AbstractContextManager:
    """Seed torch's global generator inside, and give the caller's state back afterwards."""
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


def load_eval_judges(
    cfg: Config, ckpt: dict[str, Any], device: torch.device
) -> tuple[ExpressionClassifier, IdentityEmbedder]:
    """The independent judges stored in a final or release checkpoint, in eval mode."""
    state = ckpt.get("eval_judges")
    if not state:
        raise ValueError("checkpoint has no independent judges (eval_judges); it is not a finished training run")
    n_ids = state["embedder"]["class_weight"].shape[0]
    clf, emb = build_eval_judges(cfg, n_ids)
    clf.load_state_dict(state["classifier"])
    emb.load_state_dict(state["embedder"])
    return clf.to(device).eval().requires_grad_(False), emb.to(device).eval().requires_grad_(False)


# ------------------------------------------------------------------ the gate's judge panel


def train_panel_members(
    cfg: Config,
    data: TrainData,
    device: torch.device,
    size: int,
    progress: Callable[[int, dict[str, float]], None] | None = None,
) -> list[dict[str, torch.Tensor]]:
    """The expression classifiers that join the independent one in a panel of `size` (own seeds, same recipe)."""
    members = []
    batch = eval_judge_batch(cfg)
    for k in range(1, size):
        seed = cfg.train.seed + SEED_OFFSET + k * PANEL_SEED_STEP
        with _own_rng(device):
            torch.manual_seed(seed)  # each member's initial weights
            clf = build_expression_judge(cfg)
            train_judges(clf, None, data, cfg.train.judge_steps, batch, device, seed, progress, cfg.train.judge_soften)
        members.append(clf.state_dict())
    return members


def load_gate_judges(cfg: Config, ckpt: dict[str, Any], device: torch.device) -> tuple[nn.Module, IdentityEmbedder]:
    """What gates the renders: the checkpoint's judge panel when it has one, else its independent classifier."""
    clf, emb = load_eval_judges(cfg, ckpt, device)
    extra = ckpt["eval_judges"].get("panel") or []
    if not extra:
        return clf, emb
    members = [clf]
    for state in extra:
        member = build_expression_judge(cfg)
        member.load_state_dict(state)
        members.append(member)
    return JudgePanel(members).to(device).eval().requires_grad_(False), emb

"""FID and KID of renders against held-out real images, via torchmetrics, with a pinned extractor.

Features come from one of two Inception-v3 extractors, both returning (N, 2048) pool features:
- `InceptionFeatures`: the FID Inception TorchScript file (quality.fid_weights or env
  FERSYNTH_FID_WEIGHTS) with the resize and scaling pinned here: bilinear to 299x299
  (align_corners=False, no antialias), then [0, 1] -> [-1, 0.9921875] as x * 1.9921875 - 1.
- torchmetrics' default extractor (torch-fidelity's FID Inception), given
  quality.fid_torch_fidelity_weights or allowed to download.

Features are extracted once, in batches, and fed to torchmetrics' metrics through a pass-through
feature module, so FID, KID and the per-expression breakdown share one forward pass per image.
Inputs are uint8 or float [0, 1] NCHW decoded from lossless files: JPEG artefacts alone move FID.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.quality._tensors import Device, as_nchw_tensor, iter_batches, resolve_device, to_unit_range
from pipeline.weights import WEIGHTS, Lookup, WeightsNotFound, find_weight

FID_WEIGHTS_ENV = WEIGHTS["fid"].env
INCEPTION_SIZE = 299
NUM_FEATURES = 2048
LOSSY_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".webp", ".heic", ".avif"})


class FidWeightsError(WeightsNotFound):
    """No usable Inception extractor; the message says where it looked."""


class InceptionFeatures(nn.Module):
    """FID Inception-v3 TorchScript with the resize and input scaling pinned.

    forward: uint8 [0, 255] or float [0, 1] NCHW at any size -> (N, 2048) float32.
    """

    num_features = NUM_FEATURES  # read by torchmetrics instead of probing with a dummy image

    def __init__(self, weights: Path | str) -> None:
        super().__init__()
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FidWeightsError(
                f"FID Inception weights not found: {path} (set quality.fid_weights or {FID_WEIGHTS_ENV} to "
                "fid_inception_v3_torchscript.pt)"
            )
        with warnings.catch_warnings():
            # torch.jit.load is deprecated in favour of torch.export, but the pinned file is TorchScript.
            warnings.simplefilter("ignore", FutureWarning)
            self.net = torch.jit.load(str(path), map_location="cpu").eval()
        self.requires_grad_(False)

    def train(self, mode: bool = True) -> InceptionFeatures:
        # torchmetrics and callers may call .train(); batch norm must stay in eval for pinned features.
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = to_unit_range(x, "Inception input").to(next(self.net.parameters()).device)
        if x.shape[-2:] != (INCEPTION_SIZE, INCEPTION_SIZE):
            x = F.interpolate(x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False)
        with torch.no_grad():
            return self.net(x * 1.9921875 - 1.0).float()


class _TorchmetricsDefaultFeatures(nn.Module):
    """torchmetrics' default FID Inception (torch-fidelity), fed uint8 as it expects."""

    num_features = NUM_FEATURES

    def __init__(self, weights: Path | str | None) -> None:
        super().__init__()
        from torchmetrics.image.fid import NoTrainInceptionV3

        self.net = NoTrainInceptionV3(
            name="inception-v3-compat",
            features_list=[str(NUM_FEATURES)],
            feature_extractor_weights_path=None if weights is None else str(weights),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u8 = (to_unit_range(x, "Inception input") * 255.0).round().to(torch.uint8)
        with torch.no_grad():
            return self.net(u8.to(next(self.net.parameters()).device)).float()


class _Precomputed(nn.Module):
    """Pass-through 'feature extractor': lets torchmetrics' FID/KID consume features we already have."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _find_fid(fid_weights: Path | str | None) -> Lookup:
    try:
        return find_weight("fid", fid_weights)
    except WeightsNotFound as exc:
        raise FidWeightsError(str(exc)) from None


def load_fid_extractor(
    fid_weights: Path | str | None = None,
    torch_fidelity_weights: Path | str | None = None,
    device: Device | torch.device = "auto",
) -> nn.Module:
    """The pinned TorchScript extractor if `pipeline.weights` finds it, else torchmetrics' default (downloads)."""
    dev = resolve_device(device)
    look = _find_fid(fid_weights)
    if look.path is not None:
        return InceptionFeatures(look.path).to(dev)
    try:
        return _TorchmetricsDefaultFeatures(torch_fidelity_weights).to(dev)
    except Exception as exc:
        raise FidWeightsError(look.missing_message(f"{type(exc).__name__}: {exc}")) from exc


def require_fid_extractor(
    fid_weights: Path | str | None = None, torch_fidelity_weights: Path | str | None = None
) -> str:
    """Where the FID extractor will come from, checked before any rendering; FidWeightsError if nowhere."""
    look = _find_fid(fid_weights)
    if look.path is not None:
        return f"{look.path} ({look.source})"
    try:
        _TorchmetricsDefaultFeatures(torch_fidelity_weights)
    except Exception as exc:
        raise FidWeightsError(look.missing_message(f"{type(exc).__name__}: {exc}")) from exc
    return "torchmetrics' default FID Inception"


def check_lossless(paths: Sequence[str | Path]) -> None:
    """Refuse lossy image files as FID inputs (the compression, not the generator, would be measured)."""
    lossy = [str(p) for p in paths if Path(p).suffix.lower() in LOSSY_SUFFIXES]
    if lossy:
        raise ValueError(f"FID/KID need lossless images (PNG); got {len(lossy)} lossy file(s), e.g. {lossy[0]}")


def extract_features(
    extractor: nn.Module,
    images: torch.Tensor | np.ndarray,
    batch_size: int = 32,
    device: Device | torch.device = "auto",
) -> torch.Tensor:
    """(N, d) float64 CPU features of uint8 / float [0, 1] NCHW images, computed batch by batch."""
    x = as_nchw_tensor(images)
    dev = resolve_device(device)
    extractor.eval().to(dev)
    out = []
    with torch.no_grad():
        for sl in iter_batches(x.shape[0], batch_size):
            out.append(extractor(x[sl].to(dev)).double().cpu())
    return torch.cat(out)


def _check_set(feats: torch.Tensor, name: str) -> None:
    if feats.ndim != 2:
        raise ValueError(f"{name} features must be (N, d), got shape {tuple(feats.shape)}")
    if feats.shape[0] < 2:
        raise ValueError(f"the {name} set has {feats.shape[0]} image(s); FID/KID need at least 2 in each set")
    if not torch.isfinite(feats).all():
        raise ValueError(f"{name} features contain NaN or infinite values")


def _frechet_low_rank(real: torch.Tensor, fake: torch.Tensor) -> float:
    """Exact Fréchet distance via the n1 x n2 cross-Gram matrix instead of a d x d eigen-problem.

    With S1 = A^T A and S2 = B^T B (A, B the centred features over sqrt(n - 1)), the non-zero
    eigenvalues of S1 S2 are the squared singular values of A B^T, so tr sqrt(S1 S2) is the
    nuclear norm of A B^T. Same value as torchmetrics' formula, but O(n^2 d) rather than O(d^3):
    seconds become milliseconds on CPU when the sets are smaller than the 2048 feature dimensions.
    """
    n1, n2 = real.shape[0], fake.shape[0]
    a = (real - real.mean(0)) / math.sqrt(n1 - 1)
    b = (fake - fake.mean(0)) / math.sqrt(n2 - 1)
    mean_term = (real.mean(0) - fake.mean(0)).square().sum()
    cross = torch.linalg.svdvals(a @ b.T).sum()
    return float(mean_term + a.square().sum() + b.square().sum() - 2.0 * cross)


def fid_from_features(
    real: torch.Tensor, fake: torch.Tensor, method: Literal["auto", "torchmetrics", "low_rank"] = "auto"
) -> float:
    """Fréchet distance between two feature sets in float64.

    method: "torchmetrics" (FrechetInceptionDistance with a pass-through extractor, set_dtype
    float64; its d x d eigvals costs ~10 s per call at d=2048 on 2 CPU cores), "low_rank" (the same
    quantity through the n1 x n2 cross-Gram matrix, exact), or "auto": low_rank when either set is
    smaller than the feature dimension (small sets, per-expression groups), else torchmetrics.
    Tests check the two agree.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance

    real, fake = torch.as_tensor(real).double(), torch.as_tensor(fake).double()
    _check_set(real, "real")
    _check_set(fake, "fake")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature dimensions differ: real {real.shape[1]}, fake {fake.shape[1]}")
    if method == "auto":
        method = "low_rank" if min(real.shape[0], fake.shape[0]) < real.shape[1] else "torchmetrics"
    if method == "low_rank":
        return _frechet_low_rank(real, fake)
    if method != "torchmetrics":
        raise ValueError(f"method must be auto, torchmetrics or low_rank, got {method!r}")
    metric = FrechetInceptionDistance(feature=_Precomputed(real.shape[1]), reset_real_features=True)
    metric.set_dtype(torch.float64)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    return float(metric.compute())


def kid_from_features(
    real: torch.Tensor, fake: torch.Tensor, subset_size: int = 1000, subsets: int = 100, seed: int = 0
) -> tuple[float, float, int]:
    """(kid_mean, kid_std, subset_size used); the subset size is clamped to the smaller set."""
    from torchmetrics.image.kid import KernelInceptionDistance

    real, fake = torch.as_tensor(real).double(), torch.as_tensor(fake).double()
    _check_set(real, "real")
    _check_set(fake, "fake")
    size = int(min(subset_size, real.shape[0], fake.shape[0]))
    with warnings.catch_warnings():
        # "will save all extracted features in buffer": known and intended (we hand it features anyway).
        warnings.filterwarnings("ignore", message=".*save all extracted features.*")
        metric = KernelInceptionDistance(feature=_Precomputed(real.shape[1]), subsets=subsets, subset_size=size)
    metric.set_dtype(torch.float64)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    # KID draws random subsets with the global generator: fork it so results repeat and callers' RNG is untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std), size


def fid_kid_from_features(
    real: torch.Tensor,
    fake: torch.Tensor,
    kid_subset_size: int | None = None,
    kid_subsets: int = 100,
    min_fid_images: int = 2048,
    seed: int = 0,
    warn: bool = True,
) -> dict[str, Any]:
    """FID + KID of two feature sets with the reliability flag and the sizes."""
    n_real, n_fake = int(real.shape[0]), int(fake.shape[0])
    if n_real == 0 or n_fake == 0:
        raise ValueError(f"FID/KID need non-empty sets, got n_real={n_real}, n_fake={n_fake}")
    fid = fid_from_features(real, fake)
    kid_mean, kid_std, used = kid_from_features(real, fake, kid_subset_size or 1000, kid_subsets, seed)
    reliable = min(n_real, n_fake) >= min_fid_images
    if not reliable and warn:
        # FID is biased upwards at small N (the covariance of 2048-d features is rank-deficient); KID is not.
        warnings.warn(
            f"FID on {n_real} real / {n_fake} fake images (< {min_fid_images}) is biased; use KID "
            f"({kid_mean:.4g} ± {kid_std:.2g}) for decisions",
            UserWarning,
            stacklevel=2,
        )
    return {
        "fid": fid,
        "kid_mean": kid_mean,
        "kid_std": kid_std,
        "kid_subset_size": used,
        "n_real": n_real,
        "n_fake": n_fake,
        "fid_reliable": reliable,
    }


def compute_fid_kid(
    real: torch.Tensor | np.ndarray,
    fake: torch.Tensor | np.ndarray,
    feature: nn.Module,
    kid_subset_size: int | None = None,
    kid_subsets: int = 100,
    min_fid_images: int = 2048,
    batch_size: int = 32,
    device: Device | torch.device = "auto",
) -> dict[str, Any]:
    """FID/KID of renders (`fake`) against real images, both uint8 or float [0, 1] NCHW.

    Returns fid, kid_mean, kid_std, kid_subset_size, n_real, n_fake, fid_reliable. `fid_reliable`
    is False (with a warning) when either set has fewer than `min_fid_images`: report KID there.
    """
    for name, s in (("real", real), ("fake", fake)):
        if len(s) == 0:
            raise ValueError(f"the {name} image set is empty; FID/KID need at least 2 images in each set")
        if len(s) < 2:
            raise ValueError(f"the {name} set has 1 image; FID/KID need at least 2 in each set")
    fr = extract_features(feature, real, batch_size, device)
    ff = extract_features(feature, fake, batch_size, device)
    return fid_kid_from_features(fr, ff, kid_subset_size, kid_subsets, min_fid_images)


def per_group_fid_kid(
    real_features: torch.Tensor,
    real_labels: Sequence[Any] | np.ndarray,
    fake_features: torch.Tensor,
    fake_labels: Sequence[Any] | np.ndarray,
    kid_subset_size: int | None = None,
    kid_subsets: int = 100,
    min_fid_images: int = 2048,
) -> pd.DataFrame:
    """FID/KID per label (expression) from precomputed features; one row per label in either set.

    A label with fewer than 2 images on a side gets NaN scores and note "too_few_images", not an
    error: one sparse class must not hide the others' numbers (the gates treat NaN as failing).
    """
    rl, fl = np.asarray(real_labels), np.asarray(fake_labels)
    if len(rl) != real_features.shape[0] or len(fl) != fake_features.shape[0]:
        raise ValueError("labels and features differ in length")
    rows = []
    for label in sorted(set(rl.tolist()) | set(fl.tolist()), key=str):
        r, f = real_features[torch.from_numpy(rl == label)], fake_features[torch.from_numpy(fl == label)]
        row: dict[str, Any] = {"label": label, "n_real": int(r.shape[0]), "n_fake": int(f.shape[0])}
        if min(r.shape[0], f.shape[0]) < 2:
            row |= {
                "fid": math.nan,
                "kid_mean": math.nan,
                "kid_std": math.nan,
                "fid_reliable": False,
                "note": "too_few_images",
            }
        else:
            res = fid_kid_from_features(r, f, kid_subset_size, kid_subsets, min_fid_images, warn=False)
            row |= {k: res[k] for k in ("fid", "kid_mean", "kid_std", "fid_reliable")}
            row["note"] = "" if res["fid_reliable"] else "fid_unreliable_small_set"
        rows.append(row)
    return pd.DataFrame(
        rows, columns=["label", "n_real", "n_fake", "fid", "kid_mean", "kid_std", "fid_reliable", "note"]
    )

"""FID/KID through torchmetrics with the pinned Inception extractor (real weights, offline)."""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from skimage import data

from pipeline.quality import fid as fq


@functools.cache
def _extractor(path: str) -> fq.InceptionFeatures:
    return fq.InceptionFeatures(path)


@pytest.fixture
def inception(fid_weights: Path) -> fq.InceptionFeatures:
    return _extractor(str(fid_weights))


def _real_patches(n: int = 12, size: int = 64) -> torch.Tensor:
    """n distinct uint8 NCHW crops of real photos (lossless PNGs shipped with scikit-image)."""
    photos = [data.astronaut(), data.chelsea(), data.coffee()]
    out = []
    rng = np.random.default_rng(0)
    for i in range(n):
        img = photos[i % len(photos)]
        y, x = rng.integers(0, img.shape[0] - 4 * size), rng.integers(0, img.shape[1] - 4 * size)
        patch = img[y : y + 4 * size : 4, x : x + 4 * size : 4]  # 4x subsampled 256-px window
        out.append(torch.from_numpy(np.ascontiguousarray(patch)).permute(2, 0, 1))
    return torch.stack(out)


def _scipy_fid(f1: np.ndarray, f2: np.ndarray) -> float:
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * np.real(covmean)))


def test_inception_features_shape_and_input_conventions(inception: fq.InceptionFeatures) -> None:
    imgs = _real_patches(2)
    f_u8 = fq.extract_features(inception, imgs, batch_size=2, device="cpu")
    f_float = fq.extract_features(inception, imgs.float() / 255.0, batch_size=1, device="cpu")
    assert f_u8.shape == (2, 2048) and f_u8.dtype == torch.float64
    assert torch.allclose(f_u8, f_float, atol=1e-4)  # uint8 and [0,1] float agree; batching does not matter
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        inception(imgs.float() / 127.5 - 1.0)  # the generator's [-1, 1] must be converted first


def test_fid_self_zero_and_monotone_in_noise(inception: fq.InceptionFeatures) -> None:
    real = _real_patches(8)
    feats = fq.extract_features(inception, real, batch_size=8, device="cpu")
    gen = torch.Generator().manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # small-set FID warning, expected here
        assert abs(fq.fid_from_features(feats, feats)) < 1e-3
        fids = []
        for sigma in (0.05, 0.15, 0.35):
            noisy = (real.float() / 255 + sigma * torch.randn(real.shape, generator=gen)).clamp(0, 1)
            if sigma == 0.35:  # the full image-level API once
                res = fq.compute_fid_kid(real, noisy, inception, batch_size=8, device="cpu", kid_subsets=20)
            else:
                nf = fq.extract_features(inception, noisy, batch_size=8, device="cpu")
                res = fq.fid_kid_from_features(feats, nf, kid_subsets=20)
            fids.append(res["fid"])
    assert fids[0] < fids[1] < fids[2], fids
    assert res["n_real"] == res["n_fake"] == 8 and res["fid_reliable"] is False
    assert res["kid_subset_size"] == 8


def test_torchmetrics_fid_matches_scipy_sqrtm() -> None:
    rng = np.random.default_rng(1)
    d = 16
    a = rng.normal(size=(400, d))
    b = rng.normal(size=(300, d)) @ rng.normal(scale=0.4, size=(d, d)) + 0.3
    ref = _scipy_fid(a, b)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    assert fq.fid_from_features(ta, tb, method="torchmetrics") == pytest.approx(ref, rel=1e-8, abs=1e-8)
    assert fq.fid_from_features(ta, tb, method="low_rank") == pytest.approx(ref, rel=1e-8, abs=1e-8)


def test_low_rank_fid_matches_torchmetrics_on_small_sets() -> None:
    # n < d: the case "auto" routes to the cross-Gram form; it must equal torchmetrics' eigvals result.
    rng = np.random.default_rng(4)
    a = torch.from_numpy(np.abs(rng.normal(size=(12, 256))))  # ReLU-like pool features
    b = torch.from_numpy(np.abs(rng.normal(0.2, 1.1, size=(9, 256))))
    tm = fq.fid_from_features(a, b, method="torchmetrics")
    assert fq.fid_from_features(a, b) == pytest.approx(tm, rel=1e-6)
    assert fq.fid_from_features(a, b, method="low_rank") == pytest.approx(_scipy_fid(a.numpy(), b.numpy()), rel=1e-6)
    # self-distance: eigvals of a rank-deficient product leaves ~1e-5 noise; the SVD form is tighter
    assert abs(fq.fid_from_features(a, a, method="torchmetrics")) < 1e-3
    assert abs(fq.fid_from_features(a, a, method="low_rank")) < 1e-9


def test_kid_subset_clamp_reliability_warning_and_errors() -> None:
    rng = np.random.default_rng(2)
    r, f = torch.from_numpy(rng.normal(size=(10, 8))), torch.from_numpy(rng.normal(size=(6, 8)) + 0.5)
    with pytest.warns(UserWarning, match="KID"):
        res = fq.fid_kid_from_features(r, f, kid_subset_size=1000, kid_subsets=10, min_fid_images=2048)
    assert res["kid_subset_size"] == 6 and not res["fid_reliable"]
    assert np.isfinite(res["kid_mean"]) and res["kid_mean"] > 0
    again = fq.fid_kid_from_features(r, f, kid_subset_size=1000, kid_subsets=10, warn=False)
    assert again["kid_mean"] == res["kid_mean"]  # seeded subsets: repeatable
    ok = fq.fid_kid_from_features(r, f, kid_subsets=5, min_fid_images=5, warn=False)
    assert ok["fid_reliable"]

    with pytest.raises(ValueError, match="empty"):
        fq.compute_fid_kid(torch.zeros(0, 3, 8, 8), torch.zeros(2, 3, 8, 8), torch.nn.Identity())
    with pytest.raises(ValueError, match="at least 2"):
        fq.compute_fid_kid(torch.zeros(1, 3, 8, 8), torch.zeros(2, 3, 8, 8), torch.nn.Identity())
    with pytest.raises(ValueError, match="at least 2"):
        fq.fid_from_features(r[:1], f)


def test_per_group_fid_kid() -> None:
    rng = np.random.default_rng(3)
    r = torch.from_numpy(rng.normal(size=(20, 4)))
    f = torch.from_numpy(rng.normal(size=(13, 4)))
    rl = ["happy"] * 10 + ["sad"] * 10
    fl = ["happy"] * 6 + ["sad"] * 6 + ["fear"]
    df = fq.per_group_fid_kid(r, rl, f, fl, kid_subsets=5)
    assert df["label"].tolist() == ["fear", "happy", "sad"]
    fear = df.set_index("label").loc["fear"]
    assert np.isnan(fear["fid"]) and fear["note"] == "too_few_images"
    assert df.set_index("label").loc["happy", "n_fake"] == 6
    assert np.isfinite(df.set_index("label").loc["sad", "kid_mean"])


def test_extractor_loading_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fid_weights: Path) -> None:
    with pytest.raises(fq.FidWeightsError, match=r"quality\.fid_weights"):
        fq.load_fid_extractor(tmp_path / "missing.pt")
    monkeypatch.setenv(fq.FID_WEIGHTS_ENV, str(fid_weights))
    assert isinstance(fq.load_fid_extractor(None, device="cpu"), fq.InceptionFeatures)
    monkeypatch.delenv(fq.FID_WEIGHTS_ENV)
    monkeypatch.delenv("FERSYNTH_WEIGHTS_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    def offline(*args: object, **kw: object) -> None:  # torchmetrics' default would download
        raise ConnectionError("no network")

    monkeypatch.setattr(fq, "_TorchmetricsDefaultFeatures", offline)
    with pytest.raises(fq.FidWeightsError, match=r"user cache .*cache/fersynth/weights.*download \(ConnectionError"):
        fq.load_fid_extractor(None, None, device="cpu")
    with pytest.raises(fq.FidWeightsError, match="not found"):
        fq.require_fid_extractor(None, None)
    fq.check_lossless(["a.png", "b.PNG"])
    with pytest.raises(ValueError, match="lossless"):
        fq.check_lossless(["a.png", "b.JPG"])

"""Identity checks on real photos with the real FaceNet weights (offline, from tests/conftest.py).

Photos of three different people ship with the installed packages: scikit-image's astronaut
(Eileen Collins) and cameraman, and matplotlib's Grace Hopper. scikit-image's lfw_subset adds 100
tiny (25 px) LFW faces of many people for a retrieval check in aligned-crop mode.
"""

from __future__ import annotations

import functools
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from pipeline.calibration import calibrate_identity_threshold
from pipeline.quality import facenet as fn


@functools.cache
def _scorer(path: str, detect: bool) -> fn.FaceIdentityScorer:
    return fn.FaceIdentityScorer.from_weights(path, detect=detect, device="cpu", batch_size=8)


@pytest.fixture
def detect_scorer(facenet_weights: Path) -> fn.FaceIdentityScorer:
    return _scorer(str(facenet_weights), True)


@pytest.fixture
def aligned_scorer(facenet_weights: Path) -> fn.FaceIdentityScorer:
    return _scorer(str(facenet_weights), False)


def _nchw(img: np.ndarray, size: int = 512) -> torch.Tensor:
    """HWC uint8 photo -> 1x3xSxS uint8 (equal sizes let MTCNN detect a batch at once)."""
    pil = Image.fromarray(img).convert("RGB").resize((size, size), Image.BILINEAR)
    return torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1)[None]


def _variants(img: np.ndarray) -> torch.Tensor:
    """The same photo under small edits a faithful render may show: flip, crop/shift, brightness."""
    h, w = img.shape[:2]
    flipped = img[:, ::-1]
    shifted = img[h // 40 :, w // 50 : w - w // 60]  # ~2.5% crop off the top, ~2% off the sides
    brighter = np.clip(img.astype(np.int16) + 30, 0, 255).astype(np.uint8)
    darker = (img.astype(np.float32) * 0.8).astype(np.uint8)
    return torch.cat([_nchw(v) for v in (img, flipped, shifted, brighter, darker)])


def _people() -> dict[str, np.ndarray]:
    hopper = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    return {
        "collins": data.astronaut(),
        "hopper": np.asarray(Image.open(hopper).convert("RGB")),
        "cameraman": np.stack([data.camera()] * 3, axis=-1),
    }


def test_same_person_high_different_people_low(detect_scorer: fn.FaceIdentityScorer) -> None:
    people = _people()
    embs = {}
    for name, img in people.items():
        e, found = detect_scorer.embed(_variants(img))
        assert found.all(), f"MTCNN missed a face in a variant of {name}"
        embs[name] = e
    same = []
    for name, e in embs.items():
        cos = (e[1:] @ e[0]).numpy()  # each edit against the original photo
        same.extend(cos.tolist())
        assert cos.min() > 0.8, f"{name}: same-person cosines {np.round(cos, 3)}"
    diff = []
    names = list(embs)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            cos = (embs[a] @ embs[b].T).numpy().ravel()  # all 25 variant pairs of two people
            diff.extend(cos.tolist())
            assert cos.max() < 0.35, f"{a} vs {b}: different-person cosines up to {cos.max():.3f}"
    # The two distributions separate with a wide gap; the calibrated threshold sits inside it.
    assert min(same) - max(diff) > 0.5
    thr, eer = calibrate_identity_threshold(same, diff)
    assert eer == 0.0 and max(diff) < thr < min(same)


def test_score_identity_pipeline_and_no_face(detect_scorer: fn.FaceIdentityScorer) -> None:
    people = _people()
    sources = {k: _nchw(v) for k, v in people.items()}
    rng = np.random.default_rng(0)
    noise = torch.from_numpy(rng.integers(0, 256, (1, 3, 512, 512), dtype=np.uint8))
    flat = torch.full((1, 3, 512, 512), 128, dtype=torch.uint8)
    renders = torch.cat([_variants(people["collins"])[1:2], _variants(people["hopper"])[3:4], noise, flat])
    ids = ["collins", "collins", "hopper", "cameraman"]  # 2nd is hopper's face rendered for collins
    res = fn.score_identity(detect_scorer, sources, renders, ids, threshold=0.5)
    assert res.passed.tolist() == [True, False, False, False]
    assert res.reason.tolist() == ["", "below_threshold", "no_face", "no_face"]
    assert res.face_found.tolist() == [True, True, False, False]
    assert np.isnan(res.cosine[2:]).all()


def test_source_without_face_fails_renders(detect_scorer: fn.FaceIdentityScorer) -> None:
    flat = torch.full((1, 3, 256, 256), 90, dtype=torch.uint8)
    photo = _nchw(data.astronaut(), 256)
    res = fn.score_identity(detect_scorer, {"x": flat}, photo, ["x"], threshold=0.5)
    assert res.reason.tolist() == ["no_source_face"] and not res.passed[0]


def test_aligned_mode_matches_detection(detect_scorer, aligned_scorer) -> None:
    # An aligned 64-px crop (what a renderer of aligned faces emits) embedded by direct resize
    # must land next to the MTCNN path's embedding of the full photo.
    photo = data.astronaut()
    e_full, _ = detect_scorer.embed(_nchw(photo))
    crop = detect_scorer._mtcnn(Image.fromarray(photo))  # standardised (x - 127.5) / 128
    crop_u8 = (crop * 128 + 127.5).round().clamp(0, 255).to(torch.uint8)[None]
    small = torch.nn.functional.interpolate(crop_u8.float(), size=64, mode="area").round().to(torch.uint8)
    e_small, found = aligned_scorer.embed(small)
    assert found.all()
    assert float(e_small[0] @ e_full[0]) > 0.85
    # float [-1, 1] input gives the same embedding as uint8
    e_float, _ = aligned_scorer.embed(small.float() / 127.5 - 1)
    assert torch.allclose(e_float, e_small, atol=1e-5)


def test_lfw_low_resolution_retrieval(aligned_scorer: fn.FaceIdentityScorer) -> None:
    # 40 LFW faces (many people, 25 px, upscaled): every face's flip must retrieve that face.
    faces = torch.from_numpy((data.lfw_subset()[:40] * 255).round().astype(np.uint8))[:, None]
    e, _ = aligned_scorer.embed(faces)
    ef, _ = aligned_scorer.embed(faces.flip(-1))
    sim = (ef @ e.T).numpy()
    assert (sim.argmax(axis=1) == np.arange(40)).all()
    off = sim[~np.eye(40, dtype=bool)]
    assert np.diag(sim).min() > 0.85 and np.median(off) < 0.35


def test_load_facenet_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(fn.FaceNetWeightsError, match=r"quality\.facenet_weights"):
        fn.load_facenet(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    torch.save({"nope": torch.zeros(1)}, bad)
    with pytest.raises(fn.FaceNetWeightsError, match="cannot load"):
        fn.load_facenet(bad)

    # No path and no env: the download route; simulate offline instead of touching the network.
    import facenet_pytorch

    def offline(*args: object, pretrained: str | None = None, **kw: object) -> None:
        raise ConnectionError("no network")

    monkeypatch.delenv(fn.FACENET_WEIGHTS_ENV, raising=False)
    monkeypatch.delenv("FERSYNTH_WEIGHTS_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(facenet_pytorch, "InceptionResnetV1", offline)
    with pytest.raises(
        fn.FaceNetWeightsError, match=rf"\${fn.FACENET_WEIGHTS_ENV} \(not set\).*download \(ConnectionError"
    ):
        fn.load_facenet(None)


def test_load_facenet_from_env(facenet_weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(fn.FACENET_WEIGHTS_ENV, str(facenet_weights))
    m = fn.load_facenet(None)
    assert not m.training


class _ToyEmbedder(torch.nn.Module):
    """Stands in for models.judges.IdentityEmbedder: (N,3,H,W) [-1,1] -> unit (N,d)."""

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(x.mean(dim=(2, 3)) + torch.tensor([0.0, 0.0, 1e-3]), dim=1)


def test_embedder_scorer_and_factory(facenet_weights: Path) -> None:
    s = fn.make_identity_scorer("auto", "procedural", embedder=_ToyEmbedder(), device="cpu")
    assert isinstance(s, fn.EmbedderIdentityScorer) and isinstance(s, fn.IdentityScorer)
    red = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    red[:, 0] = 255
    blue = torch.zeros(1, 3, 8, 8, dtype=torch.uint8)
    blue[:, 2] = 255
    res = fn.score_identity(s, {"r": red, "b": blue}, torch.cat([red[:1], blue]), ["r", "r"], threshold=0.5)
    assert res.passed.tolist() == [True, False]
    assert res.cosine[0] == pytest.approx(1.0, abs=1e-4)

    auto_photo = fn.make_identity_scorer("auto", "photos", facenet_weights=facenet_weights, device="cpu")
    assert isinstance(auto_photo, fn.FaceIdentityScorer)
    forced = fn.make_identity_scorer("facenet", "procedural", facenet_weights=facenet_weights, detect=False)
    assert isinstance(forced, fn.FaceIdentityScorer) and not forced.detect
    with pytest.raises(ValueError, match="identity embedder"):
        fn.make_identity_scorer("embedder", "photos")
    with pytest.raises(KeyError, match="ghost"):
        fn.identity_scores({"r": torch.ones(3)}, torch.ones(1, 3), ["ghost"])


def test_photo_threshold_calibrated_between_people(detect_scorer: fn.FaceIdentityScorer) -> None:
    from pipeline.calibration import calibrate_photo_identity_threshold

    people = _people()
    images = torch.cat(
        [_variants(img) for img in people.values()] + [torch.full((1, 3, 512, 512), 128, dtype=torch.uint8)]
    )
    ids = [name for name in people for _ in range(5)] + ["blank"]
    info = calibrate_photo_identity_threshold(detect_scorer, images, ids)
    # The faceless image is left out; the threshold sits in the wide same/different gap (see above).
    assert (info["n_images"], info["n_faces"], info["n_identities"]) == (16, 15, 3)
    assert info["identity_eer"] == 0.0 and 0.35 < info["identity_threshold"] < 0.8
    # Capped: whole identities in sorted order (blank, cameraman, collins; not hopper) up to max_images.
    capped = calibrate_photo_identity_threshold(detect_scorer, images, ids, max_images=12)
    assert (capped["n_images"], capped["n_identities"]) == (11, 2)
    with pytest.raises(ValueError, match="at least two people"):
        calibrate_photo_identity_threshold(detect_scorer, images[:5], ids[:5])

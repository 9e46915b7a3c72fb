"""Identity preservation: cosine similarity between a render and its source identity.

Two backends with one interface (`IdentityScorer`):
- `FaceIdentityScorer`: FaceNet (facenet-pytorch InceptionResnetV1, VGGFace2) for photos, with MTCNN
  detection/alignment or, for images that are already aligned face crops, a plain resize.
- `EmbedderIdentityScorer`: the project's own identity embedder (`models.judges.IdentityEmbedder`),
  for procedural faces that FaceNet was never trained on.

A render in which no face is found is not an error: its embedding row is NaN, `face_found` is False,
and `identity_checks` fails it with reason "no_face".
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from pipeline.quality._tensors import Device, iter_batches, resolve_device, to_signed_range
from pipeline.weights import WEIGHTS, WeightsNotFound, find_weight

FACENET_WEIGHTS_ENV = WEIGHTS["facenet"].env
FACENET_SIZE = 160
FACENET_MARGIN = 14

# Reasons written to the manifest's identity_reason column; "" means passed.
REASON_NO_FACE = "no_face"
REASON_NO_SOURCE_FACE = "no_source_face"
REASON_NAN = "nan"
REASON_LOW = "below_threshold"


class FaceNetWeightsError(WeightsNotFound):
    """FaceNet weights could not be found or loaded; the message says where it looked."""


def load_facenet(weights: Path | str | None = None, device: Device | torch.device = "cpu") -> nn.Module:
    """FaceNet InceptionResnetV1 (VGGFace2, 512-d L2-normalised embeddings) in eval mode.

    The state_dict comes from `pipeline.weights.find_weight("facenet", weights)` (setting, env, weights
    folder, user cache), loaded with `weights_only=True` so a weights file cannot run code; found
    nowhere, facenet-pytorch's own `pretrained='vggface2'` download is tried.
    """
    from facenet_pytorch import InceptionResnetV1

    dev = resolve_device(device)
    try:
        look = find_weight("facenet", weights)
    except WeightsNotFound as exc:
        raise FaceNetWeightsError(str(exc)) from None
    if look.path is not None:
        model = InceptionResnetV1(pretrained=None, classify=False)
        try:
            state = torch.load(look.path, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except Exception as exc:  # a wrong file should say which file, not just "unexpected key"
            raise FaceNetWeightsError(
                f"cannot load FaceNet state_dict from {look.path} ({look.source}): {exc}"
            ) from exc
    else:
        try:
            model = InceptionResnetV1(pretrained="vggface2", classify=False)
        except Exception as exc:
            raise FaceNetWeightsError(look.missing_message(f"{type(exc).__name__}: {exc}")) from exc
    return model.eval().to(dev)


def _face_prob(p: object) -> float:
    """MTCNN's per-image probability: a float, a 1-element array in batch mode, or None/[None] without a face."""
    if p is None:
        return 0.0
    arr = np.asarray(p, dtype=object).ravel()
    if arr.size == 0 or arr[0] is None:
        return 0.0
    v = float(arr[0])
    return v if np.isfinite(v) else 0.0


@runtime_checkable
class IdentityScorer(Protocol):
    """What identity checks need: batched embeddings plus a per-image 'face usable' mask."""

    name: str

    def embed(self, images: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]: ...


class FaceIdentityScorer:
    """FaceNet embeddings of photos.

    images: NCHW uint8 [0, 255] or float [-1, 1]. With `detect=True` each image goes through MTCNN
    (image_size=160, margin=14, post_process=True: the crop and standardisation FaceNet was trained
    with); with `detect=False` the images are taken as aligned face crops, resized to 160 and
    standardised as (x - 127.5) / 128.
    """

    name = "facenet"

    def __init__(
        self,
        model: nn.Module,
        detect: bool = True,
        device: Device | torch.device = "auto",
        batch_size: int = 32,
        min_face_prob: float = 0.9,
    ) -> None:
        self.device = resolve_device(device)
        self.model = model.eval().to(self.device)
        self.detect = detect
        self.batch_size = batch_size
        self.min_face_prob = min_face_prob
        self._mtcnn = None
        if detect:
            from facenet_pytorch import MTCNN

            # MTCNN's own P/R/O-net weights ship inside the facenet-pytorch wheel: no download.
            self._mtcnn = MTCNN(image_size=FACENET_SIZE, margin=FACENET_MARGIN, post_process=True, device=self.device)

    @classmethod
    def from_weights(
        cls, weights: Path | str | None, detect: bool = True, device: Device = "auto", batch_size: int = 32
    ) -> FaceIdentityScorer:
        dev = resolve_device(device)
        return cls(load_facenet(weights, dev), detect=detect, device=dev, batch_size=batch_size)

    def _crops(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Standardised 160x160 crops of a [-1, 1] batch and the mask of images that have one."""
        if not self.detect:
            # (x+1)*127.5 then (v-127.5)/128 is x*127.5/128: the same standardisation MTCNN applies.
            crops = F.interpolate(
                x, size=(FACENET_SIZE, FACENET_SIZE), mode="bilinear", align_corners=False, antialias=True
            ) * (127.5 / 128.0)
            return crops, torch.ones(x.shape[0], dtype=torch.bool)
        assert self._mtcnn is not None
        # MTCNN wants HWC 0..255 (as decoded photos are); a batch of equal-size images is detected at once.
        hwc = ((x + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        # PIL images, not arrays: facenet-pytorch crops numpy input with OpenCV, which is not a dependency.
        pil = [Image.fromarray(im) for im in hwc]
        with torch.no_grad():
            try:
                faces, probs = self._mtcnn(pil, return_prob=True)
            except ValueError:
                # facenet-pytorch 2.5.3 with numpy >= 2 cannot stack a batch's results when some images
                # have no face ("inhomogeneous shape"); detect one by one then (same detector, slower).
                pairs = [self._mtcnn(im, return_prob=True) for im in pil]
                faces, probs = [f for f, _ in pairs], [q for _, q in pairs]
        found = torch.tensor(
            [f is not None and _face_prob(p) >= self.min_face_prob for f, p in zip(faces, probs, strict=True)],
            dtype=torch.bool,
        )
        crops = torch.zeros(x.shape[0], 3, FACENET_SIZE, FACENET_SIZE)
        for i, f in enumerate(faces):
            if found[i]:
                crops[i] = f
        return crops, found

    def embed(self, images: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 512) float32 CPU embeddings (NaN rows where no face) and an (N,) bool face_found mask."""
        x = to_signed_range(images, "FaceNet input")
        embs, founds = [], []
        for sl in iter_batches(x.shape[0], self.batch_size):
            crops, found = self._crops(x[sl])
            emb = torch.full((crops.shape[0], 512), float("nan"))
            if found.any():
                with torch.no_grad():
                    out = self.model(crops[found].to(self.device)).float().cpu()
                emb[found] = F.normalize(out, dim=1)
            embs.append(emb)
            founds.append(found)
        return torch.cat(embs), torch.cat(founds)


class _Embedder(Protocol):
    def embed(self, x: torch.Tensor) -> torch.Tensor: ...


class EmbedderIdentityScorer:
    """The project's identity embedder behind the `IdentityScorer` interface (procedural faces).

    The embedder takes [-1, 1] NCHW at its training resolution and returns L2-normalised (N, d).
    Every image counts as a face; a non-finite embedding row is reported as face_found=False so the
    check fails ("no_face") rather than passing on garbage.
    """

    name = "embedder"

    def __init__(
        self,
        embedder: _Embedder,
        input_size: int | None = None,
        device: Device | torch.device = "auto",
        batch_size: int = 64,
    ) -> None:
        self.embedder = embedder
        self.input_size = input_size
        self.device = resolve_device(device)
        self.batch_size = batch_size
        if isinstance(embedder, nn.Module):
            embedder.eval().to(self.device)

    def embed(self, images: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        x = to_signed_range(images, "identity embedder input")
        outs = []
        for sl in iter_batches(x.shape[0], self.batch_size):
            xb = x[sl].to(self.device)
            if self.input_size is not None and xb.shape[-1] != self.input_size:
                xb = F.interpolate(
                    xb, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False, antialias=True
                )
            with torch.no_grad():
                outs.append(F.normalize(self.embedder.embed(xb).float(), dim=1).cpu())
        emb = torch.cat(outs)
        found = torch.isfinite(emb).all(dim=1)
        emb[~found] = float("nan")
        return emb, found


def resolve_identity_backend(kind: str, dataset_kind: str) -> Literal["facenet", "embedder"]:
    """'auto' is the project's embedder for procedural data and FaceNet for photos."""
    if kind not in ("auto", "facenet", "embedder"):
        raise ValueError(f"identity backend must be auto, facenet or embedder, got {kind!r}")
    if kind == "auto":
        return "embedder" if dataset_kind == "procedural" else "facenet"
    return kind  # type: ignore[return-value]


def make_identity_scorer(
    kind: Literal["auto", "facenet", "embedder"],
    dataset_kind: str,
    *,
    facenet_weights: Path | str | None = None,
    embedder: _Embedder | None = None,
    embedder_input_size: int | None = None,
    detect: bool = True,
    device: Device = "auto",
    batch_size: int = 32,
) -> IdentityScorer:
    """Pick the identity backend: 'auto' uses the embedder for procedural data, FaceNet otherwise."""
    chosen = resolve_identity_backend(kind, dataset_kind)
    if chosen == "embedder":
        if embedder is None:
            raise ValueError(
                f"identity backend 'embedder' (dataset kind {dataset_kind!r}) needs the trained identity embedder "
                "(models.judges.IdentityEmbedder from the judges training step); pass embedder= or set "
                "quality.identity_backend=facenet"
            )
        return EmbedderIdentityScorer(embedder, input_size=embedder_input_size, device=device, batch_size=batch_size)
    return FaceIdentityScorer.from_weights(facenet_weights, detect=detect, device=device, batch_size=batch_size)


def identity_prototypes(
    scorer: IdentityScorer, images_by_identity: Mapping[Hashable, torch.Tensor | np.ndarray]
) -> dict[Hashable, torch.Tensor]:
    """One unit embedding per source identity: the renormalised mean over its images with a face.

    An identity with no usable face gets a NaN vector, so its renders fail ("no_source_face").
    """
    out: dict[Hashable, torch.Tensor] = {}
    for ident, imgs in images_by_identity.items():
        emb, found = scorer.embed(imgs)
        out[ident] = (
            F.normalize(emb[found].mean(0), dim=0) if found.any() else torch.full((emb.shape[1],), float("nan"))
        )
    return out


def identity_scores(
    source_embeddings_by_identity: Mapping[Hashable, torch.Tensor],
    render_embeddings: torch.Tensor,
    render_identity_ids: Sequence[Hashable],
) -> torch.Tensor:
    """Cosine between each render and its identity's source embedding; NaN where either is missing.

    Source entries may be (d,) or (k, d) (k images of one identity: their mean direction is used).
    An identity id with no source entry is a data error and raises.
    """
    n = render_embeddings.shape[0]
    if len(render_identity_ids) != n:
        raise ValueError(f"{n} render embeddings but {len(render_identity_ids)} identity ids")
    missing = sorted({str(i) for i in render_identity_ids if i not in source_embeddings_by_identity})
    if missing:
        raise KeyError(f"no source embedding for identity id(s): {', '.join(missing[:10])}")
    protos = {}
    for k, v in source_embeddings_by_identity.items():
        v = torch.as_tensor(v).float()
        protos[k] = F.normalize(v.mean(0), dim=0) if v.ndim == 2 else F.normalize(v, dim=0)
    src = torch.stack([protos[i] for i in render_identity_ids])
    # Renormalise renders too: cosine must not depend on a backend's normalisation.
    return (F.normalize(render_embeddings.float(), dim=1) * src).sum(dim=1)


@dataclass(frozen=True)
class IdentityResult:
    cosine: np.ndarray  # float, NaN where no score
    face_found: np.ndarray  # bool
    passed: np.ndarray  # bool
    reason: np.ndarray  # str: "" when passed, else no_face / no_source_face / nan / below_threshold


def identity_checks(
    cosine: torch.Tensor | np.ndarray,
    face_found: torch.Tensor | np.ndarray,
    threshold: float,
    source_found: torch.Tensor | np.ndarray | None = None,
) -> IdentityResult:
    """Per-render pass/fail with a reason. NaN never passes (NaN >= t is False, and it is labelled)."""
    cos = np.asarray(torch.as_tensor(cosine).float().numpy(), dtype=np.float64)
    found = np.asarray(torch.as_tensor(face_found).numpy(), dtype=bool)
    src_ok = np.ones_like(found) if source_found is None else np.asarray(source_found, dtype=bool)
    passed = found & src_ok & np.isfinite(cos) & (cos >= threshold)
    reason = np.full(cos.shape, "", dtype=object)
    reason[~passed & (cos < threshold)] = REASON_LOW
    reason[~passed & ~np.isfinite(cos)] = REASON_NAN
    reason[~src_ok] = REASON_NO_SOURCE_FACE
    reason[~found] = REASON_NO_FACE
    return IdentityResult(cosine=cos, face_found=found, passed=passed, reason=reason.astype(str))


def score_identity(
    scorer: IdentityScorer,
    source_images_by_identity: Mapping[Hashable, torch.Tensor | np.ndarray],
    renders: torch.Tensor | np.ndarray,
    render_identity_ids: Sequence[Hashable],
    threshold: float,
) -> IdentityResult:
    """Embed sources and renders, score each render against its identity, and apply the threshold."""
    protos = identity_prototypes(scorer, source_images_by_identity)
    emb, found = scorer.embed(renders)
    cos = identity_scores(protos, emb, render_identity_ids)
    src_found = np.array([bool(torch.isfinite(protos[i]).all()) for i in render_identity_ids])
    return identity_checks(cos, found, threshold, source_found=src_found)

"""Gate thresholds derived from real data instead of guessed: the one place calibration lives.

On the real validation split (identities never seen in training), with the independent judges:
- identity: every image's cosine to its own identity's prototype (mean embedding of that
  identity's *other* images) is a "same" score, its cosine to every other identity's prototype a
  "different" score; the threshold sits at their equal-error point. This is the same comparison a
  render gets (render vs the source identity's prototype).
- expression: the probability threshold that keeps `quality.expression_keep` (all, by default) of the correctly
  classified real images (`calibrate_expression_threshold`), pooled and per expression (`calibrate_expression_thresholds`;
  generation uses the per-class ones unless `quality.expression_calibration: pooled`), with the
  classifier's real-val accuracy recorded beside it.
The result is stored in the checkpoint (`calibration`) and used by generation unless
`quality.thresholds: config` asks for the fixed config values.

Photo datasets are judged for identity by FaceNet, whose threshold generation calibrates the same
way on the dataset's photos (`calibrate_photo_identity_threshold`): FaceNet's weights are a
generation-time input, not part of the checkpoint. `apply_calibration` puts both into the config a
dataset is generated with and returns how they were found: data kept beside that config (plan.json,
the card's `thresholds.calibration`), not a config field.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from manifests.labels import dataset_kind, read_labels
from pipeline.cache import load_tensors
from pipeline.config import Config, ConfigError
from pipeline.core.data import load_split
from pipeline.expressions import EXPRESSIONS
from pipeline.judges import load_gate_judges
from pipeline.quality.facenet import IdentityScorer, make_identity_scorer, resolve_identity_backend
from pipeline.quality.fid import kid_from_features

LEGACY_EXPRESSION_KEEP = 0.95

# --------------------------------------------------------------------------- thresholds from scores


def calibrate_identity_threshold(
    same_scores: np.ndarray | list[float], diff_scores: np.ndarray | list[float]
) -> tuple[float, float]:
    """(threshold, EER) at the equal-error point of same-identity vs different-identity cosines.

    A pair is accepted when score >= threshold. FRR(t) = share of same pairs below t, FAR(t) =
    share of different pairs at or above t. Candidate thresholds are the midpoints between
    consecutive distinct scores (plus one below and one above all), so a perfectly separable set
    gets the midpoint of its gap and EER 0. The chosen t minimises |FAR - FRR|, ties broken by the
    smaller FAR + FRR; EER is reported as (FAR + FRR) / 2 there.
    """
    same = np.asarray(same_scores, dtype=np.float64).ravel()
    diff = np.asarray(diff_scores, dtype=np.float64).ravel()
    if same.size == 0 or diff.size == 0:
        raise ValueError(f"calibration needs same and different pairs, got {same.size} and {diff.size}")
    if not (np.isfinite(same).all() and np.isfinite(diff).all()):
        raise ValueError("calibration scores contain NaN or infinite values")
    u = np.unique(np.concatenate([same, diff]))
    cand = np.concatenate([[u[0] - 1e-6], (u[:-1] + u[1:]) / 2.0, [u[-1] + 1e-6]])
    s_sorted, d_sorted = np.sort(same), np.sort(diff)
    frr = np.searchsorted(s_sorted, cand, side="left") / same.size  # same < t
    far = 1.0 - np.searchsorted(d_sorted, cand, side="left") / diff.size  # diff >= t
    gap = np.abs(far - frr)
    best = np.flatnonzero(gap == gap.min())
    i = best[np.argmin((far + frr)[best])]
    return float(cand[i]), float((far[i] + frr[i]) / 2.0)


def calibrate_expression_threshold(
    val_p_target: np.ndarray | list[float], val_correct: np.ndarray | list[bool], keep: float = 0.95
) -> float:
    """Min target probability such that `keep` of the real validation images the classifier gets right pass.

    Rule: t = the largest value such that at least `keep` of the correctly classified real validation
    images have p_target >= t (the lower (1 - keep) quantile).
    The render check (argmax == target and p_target >= t) then rejects at most 1 - keep of renders
    that the classifier finds as convincing as correctly recognised real faces. (A precision rule
    would be degenerate: p_target >= 0.5 already implies argmax == target, so precision is 1 there.)
    """
    p = np.asarray(val_p_target, dtype=np.float64).ravel()
    ok = np.asarray(val_correct, dtype=bool).ravel()
    if p.shape != ok.shape:
        raise ValueError(f"val_p_target has {p.size} values but val_correct has {ok.size}")
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    good = p[ok & np.isfinite(p)]
    if good.size == 0:
        raise ValueError("no correctly classified validation images to calibrate on")
    # Largest t that still keeps >= keep of them: drop at most floor(n * (1 - keep)) lowest scores
    # (the epsilon guards 1 - 0.9 = 0.0999... from flooring 1.0 down to 0).
    drop = int(np.floor(good.size * (1.0 - keep) + 1e-9))
    return float(np.sort(good)[drop])


def calibrate_expression_thresholds(
    val_p_target: np.ndarray | list[float],
    val_correct: np.ndarray | list[bool],
    val_labels: np.ndarray | list[int],
    names: tuple[str, ...] | list[str],
    keep: float = 0.95,
    min_images: int = 20,
) -> dict[str, float]:
    """`calibrate_expression_threshold` within each class (labels index `names`).

    A render is then held to the real faces of its own expression: each class keeps `keep` of its
    correctly classified real validation images. Classes with fewer than `min_images` correct images
    are left out (their renders use the pooled threshold): a 5% quantile of a handful is noise.
    """
    p = np.asarray(val_p_target, dtype=np.float64).ravel()
    ok = np.asarray(val_correct, dtype=bool).ravel()
    y = np.asarray(val_labels).ravel()
    if not p.shape == ok.shape == y.shape:
        raise ValueError(f"val_p_target, val_correct and val_labels differ in length: {p.size}, {ok.size}, {y.size}")
    out = {}
    for k, name in enumerate(names):
        m = y == k
        if int((ok & m & np.isfinite(p)).sum()) >= min_images:
            out[name] = calibrate_expression_threshold(p[m], ok[m], keep)
    return out


# --------------------------------------------------------------------------- from the judges and photos


@torch.no_grad()
def calibrate_thresholds(cfg: Config, ckpt: dict[str, Any], device: torch.device, split: str = "val") -> dict[str, Any]:
    clf, emb = load_gate_judges(cfg, ckpt, device)
    data = load_split(cfg.data.root, cfg.model.max_resolution, split, cfg.data.cache_dir)
    full = cfg.model.max_resolution
    probs, embs = [], []
    for start in range(0, data.n, 128):
        x = data.batch(torch.arange(start, min(start + 128, data.n)), full, 1.0, device)
        probs.append(torch.softmax(clf(x), 1).cpu())
        embs.append(emb.embed(x).cpu())
    p = torch.cat(probs)
    e = torch.cat(embs).double()
    y = data.labels
    p_target = p[torch.arange(len(y)), y].numpy()
    correct = (p.argmax(1) == y).numpy()
    labels = y.numpy()
    keep = cfg.quality.expression_keep
    t_expr = calibrate_expression_threshold(p_target, correct, keep)
    t_per_class = calibrate_expression_thresholds(p_target, correct, labels, EXPRESSIONS, keep)

    same, diff = leave_one_out_scores(e, data.identity)
    t_id, eer = calibrate_identity_threshold(same.numpy(), diff.numpy())
    return {
        "split": split,
        "n_images": int(data.n),
        "n_identities": len(data.identity_names),
        "embedder_identity_threshold": t_id,
        "identity_eer": eer,
        "expression_threshold": t_expr,
        "expression_keep": keep,
        "expression_val_accuracy": float(np.mean(correct)),
        "expression_thresholds": t_per_class,
        # The share of each class's real val images that pass the pooled threshold: what a single
        # threshold would do to that class (the card shows it beside the per-class values).
        "expression_val_pass_pooled": {
            name: float(np.mean((correct & (p_target >= t_expr))[labels == k]))
            for k, name in enumerate(EXPRESSIONS)
            if (labels == k).any()
        },
    }


def leave_one_out_scores(emb: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """("same", "different") cosines of unit embeddings against identity prototypes.

    "Same": each image against the mean of its identity's *other* images (identities with one image
    give none); "different": each image against every other identity's prototype. This is the
    comparison a render gets at generation time (render vs its source identity's prototype).
    """
    emb = emb.double()
    n_ids = int(ids.max()) + 1
    sums = torch.zeros(n_ids, emb.shape[1], dtype=torch.float64).index_add_(0, ids, emb)
    counts = torch.bincount(ids, minlength=n_ids).double()
    present = counts > 0
    protos = torch.nn.functional.normalize(sums / counts.clamp(min=1)[:, None], dim=1)
    own = (sums[ids] - emb) / (counts[ids] - 1).clamp(min=1)[:, None]
    same = (torch.nn.functional.normalize(own, dim=1) * emb).sum(1)[counts[ids] > 1]
    cos_all = emb @ protos.T
    mask = present[None, :].expand_as(cos_all).clone()
    mask[torch.arange(len(ids)), ids] = False
    return same, cos_all[mask]


@torch.no_grad()
def calibrate_photo_identity_threshold(
    scorer: IdentityScorer,
    images: torch.Tensor,
    identities: list[str],
    max_images: int = 300,
) -> dict[str, Any]:
    """FaceNet's identity threshold at the equal-error point on real photos of distinct people.

    FaceNet cosines between two photos of one person depend on the photo source (resolution, crop,
    pose range), so a fixed threshold copied from elsewhere passes or fails renders for reasons of
    its own. The identities are taken in sorted order until ``max_images`` is reached; images where
    no face is found are left out (and counted).
    """
    if len(identities) != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {len(identities)} identity labels")
    names = sorted(set(identities))
    by_name: dict[str, list[int]] = {}
    for i, name in enumerate(identities):
        by_name.setdefault(name, []).append(i)
    rows: list[int] = []
    for name in names:
        if len(rows) + len(by_name[name]) > max_images and rows:
            break
        rows += by_name[name]
    emb, found = scorer.embed(images[torch.as_tensor(rows)])
    keep = found.nonzero().flatten()
    codes = {name: k for k, name in enumerate(sorted({identities[rows[i]] for i in keep.tolist()}))}
    ids = torch.tensor([codes[identities[rows[i]]] for i in keep.tolist()], dtype=torch.long)
    if len(codes) < 2 or int((torch.bincount(ids) > 1).sum()) < 1:
        raise ValueError(
            f"identity calibration needs at least two people with a face found and one with two images; "
            f"found faces in {int(found.sum())} of {len(rows)} images of {len(codes)} people"
        )
    same, diff = leave_one_out_scores(emb[keep], ids)
    t, eer = calibrate_identity_threshold(same.numpy(), diff.numpy())
    return {
        "backend": scorer.name,
        "identity_threshold": t,
        "identity_eer": eer,
        "n_images": len(rows),
        "n_faces": int(found.sum()),
        "n_identities": len(codes),
    }


# --------------------------------------------------------------------------- into a generation config


def apply_calibration(cfg: Config, ckpt: dict[str, Any], explicit: set[str]) -> dict[str, Any]:
    """Use thresholds calibrated on real data, except where the user set a value explicitly: the
    judges' ones from the real validation split at training time (pipeline.calibration, in the
    checkpoint) and, for photo data judged by FaceNet, FaceNet's identity threshold, calibrated here.

    Returns how each was derived: data beside the config (the plan and the dataset card keep it)."""
    q = cfg.quality
    record: dict[str, Any] = {}
    if q.thresholds != "calibrated":
        return record
    cal = ckpt.get("calibration") or {}
    if "expression_threshold" in cal:
        # Calibrations written before the setting existed kept 95%.
        keep = float(cal.get("expression_keep", LEGACY_EXPRESSION_KEEP))
        if "expression_keep" in explicit and not math.isclose(q.expression_keep, keep):
            raise ConfigError(
                f"quality.expression_keep={q.expression_keep}: the checkpoint's thresholds were calibrated at {keep}; "
                f"recalibrate: fersynth export CKPT OUT --recalibrate --set quality.expression_keep={q.expression_keep}"
            )
        q.expression_keep = keep
        applied = [n for n in ("embedder_identity_threshold", "expression_threshold") if n not in explicit]
        for name in applied:
            setattr(q, name, round(float(cal[name]), 4))
        # Per-class thresholds unless the user fixed a threshold or asked for the pooled one. A
        # checkpoint calibrated before they existed has none: its renders get the pooled threshold
        # (`fersynth export --recalibrate` adds them).
        per_class = cal.get("expression_thresholds")
        fixed = {"expression_threshold", "expression_thresholds"} & explicit
        if q.expression_calibration == "per_class" and per_class and not fixed:
            q.expression_thresholds = {k: round(float(v), 4) for k, v in per_class.items()}
            applied.append("expression_thresholds")
        keys = (
            "split",
            "expression_keep",
            "n_images",
            "n_identities",
            "identity_eer",
            "expression_val_accuracy",
            "expression_val_pass_pooled",
        )
        record["checkpoint"] = {**{k: cal[k] for k in keys if k in cal}, "applied": applied}
    elif "error" in cal:  # e.g. too few validation identities at training time: config values kept
        record["checkpoint"] = {"error": cal["error"]}
    if "identity_threshold" not in explicit:
        record.update(_calibrate_facenet(cfg))
    return record


def _calibrate_facenet(cfg: Config) -> dict[str, Any]:
    """{"facenet": how its threshold was found} for photo data judged by FaceNet (the threshold goes into
    `cfg`), else {}."""
    q, root = cfg.quality, Path(cfg.data.root)
    if not (root / "labels.parquet").is_file():
        return {}  # _check_data names the problem when the plan is made
    kind = dataset_kind(read_labels(root)[0])
    if resolve_identity_backend(q.identity_backend, kind) != "facenet":
        return {}
    images, frame = load_tensors(root, cfg.model.max_resolution, cfg.data.cache_dir)
    scorer = make_identity_scorer(
        "facenet", kind, facenet_weights=q.facenet_weights, detect=q.face_detection, device=q.device
    )
    # Every split: FaceNet never saw any of these people (unlike the project's embedder, which is
    # calibrated on held-out identities), and the sources of the renders are among them.
    try:
        info = calibrate_photo_identity_threshold(scorer, images, frame["identity"].tolist(), q.calibration_max_images)
    except ValueError as exc:  # too few faces or people: keep the config value, say why
        return {"facenet": {"error": f"{root}: {exc}; config value kept"}}
    q.identity_threshold = round(float(info["identity_threshold"]), 4)
    return {"facenet": {"split": "all", **info}}


def real_vs_real_kid(
    real_features: torch.Tensor, n: int, draws: int = 10, quantile: float = 0.95, subsets: int = 20, seed: int = 0
) -> float:
    """How far apart two real samples of `n` images look to KID: the `quantile` of KID between two
    disjoint random real subsets of that size (half the class each when it has fewer than 2n).

    A class's KID gate is the set's ceiling plus this: small classes give noisy KIDs, and a render
    set must not fail for a difference two real samples of its size would show too.
    """

    size = min(n, real_features.shape[0] // 2)
    if size < 2:
        return float("nan")
    gen = torch.Generator().manual_seed(seed)
    kids = []
    for d in range(draws):
        perm = torch.randperm(real_features.shape[0], generator=gen)
        a, b = real_features[perm[:size]], real_features[perm[size : 2 * size]]
        kids.append(kid_from_features(a, b, size, subsets, seed=seed + d)[0])
    return float(np.quantile(kids, quantile))

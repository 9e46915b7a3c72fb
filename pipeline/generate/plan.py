"""The sweep plan: which identities x expressions x intensities x repeats a dataset holds.

A plan is pure data: every planned image has a deterministic sample id, seeds and file name, so the
same plan always names (and renders) the same images, and a resume can tell from the ids alone
which shards are already done. It is saved with the dataset as `plan.json` (items, columnar) plus
`identity_codes.npy` (the w_id of every identity), and shard tasks render from those files only.

Balanced classes by construction: every identity gets the same number of renders of every target
expression (len(intensities) x repeats, or repeats with generate.intensity_range); neutral, which has
no intensity, is rendered at intensity 0 that many times, told apart by its repeat index and jitter seed.

With generate.source_photos "all" each render of a real identity starts from one of its photos (every
session, pose, light and expression it has, in a seeded order that uses each before any repeats): the
render takes that photo's own codes and, where drawn over a photo, its pixels. The photo is the
item's `source_image`, part of its sample id and of the manifest.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from manifests.layout import CODES_FILE, PLAN_FILE
from manifests.schema import make_sample_id
from pipeline.config import GenerateConfig
from pipeline.core.codes import sample_identity
from pipeline.core.data import session_of, to_model_range
from pipeline.expressions import EXPRESSION_INDEX, check_expression_names
from pipeline.io_utils import atomic_path, atomic_write_json, sha256_file

PLAN_FORMAT = "fersynth.generate.plan.v1"
# Bump when the rendering recipe (code arithmetic, jitter, PNG encoding) changes pixels: it is part of
# every sample id, so a dataset is never resumed with images from two recipes.
RENDER_VERSION = 1
NOVEL_SOURCE = "novel"


class PlanError(ValueError):
    """A sweep that cannot be planned (no identities, unknown expression or identity, ...)."""


@dataclass(frozen=True)
class PlannedIdentity:
    identity_id: str
    source: str  # manifest identity_source: real:<split> or novel
    split: str | None  # the data split of a real identity
    code_row: int  # row in identity_codes.npy
    # Edit-mask checkpoints: the real photo (labels `path`) this identity's renders are drawn over.
    base_image: str | None = None


@dataclass(frozen=True)
class PlanItem:
    sample_id: str
    file_name: str
    identity_id: str
    identity_source: str
    code_row: int
    expression: str
    expression_index: int
    intensity: float  # float32-exact, the precision the manifest keeps
    repeat: int
    noise_seed: int  # drives the w_exp jitter of this sample
    nuisance_seed: int  # drives the w_id jitter (pose/light/background live in w_id: swaps keep the source's)
    # generate.source_photos "all": the photo (labels `path`) whose codes (and pixels) this render starts from.
    source_image: str | None = None


@dataclass
class SweepPlan:
    key: str  # sha256 of the render key and every item: same key <=> same images
    render_key: dict[str, Any]
    identities: list[PlannedIdentity]
    items: list[PlanItem]
    shard_size: int
    codes: np.ndarray  # (n_identities, id_dim) float32
    meta: dict[str, Any] = field(default_factory=dict)  # checkpoint path/step, data root, config (not in the key)

    @property
    def n_shards(self) -> int:
        return max(1, -(-len(self.items) // self.shard_size))

    def shard(self, index: int) -> list[PlanItem]:
        if not 0 <= index < self.n_shards:
            raise IndexError(f"shard {index} is outside 0..{self.n_shards - 1}")
        return self.items[index * self.shard_size : (index + 1) * self.shard_size]

    def shard_ids(self, index: int) -> list[str]:
        return [it.sample_id for it in self.shard(index)]

    def iter_shards(self) -> Iterator[tuple[int, list[PlanItem]]]:
        for i in range(self.n_shards):
            yield i, self.shard(i)

    def class_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(self.render_key["expressions"], 0)
        for it in self.items:
            counts[it.expression] += 1
        return counts


def _seed(*parts: Any) -> int:
    # 63-bit so it fits the manifest's int64 seed columns; a hash, so it does not depend on the
    # order in which samples are drawn, batched or sharded.
    h = hashlib.sha256(json.dumps(parts, separators=(",", ":")).encode()).digest()
    return int.from_bytes(h[:8], "big") >> 1


def check_expressions(expressions: list[str]) -> list[str]:
    """The config's own check, again here because a plan can be built from an unvalidated config."""
    try:
        return check_expression_names(expressions)
    except ValueError as exc:
        raise PlanError(f"generate.expressions: {exc}") from None


def cells(gen: GenerateConfig) -> list[tuple[str, float | None, int]]:
    """(expression, intensity, repeat) per identity; the same count for every expression.

    With generate.intensity_range the intensity is None here: each item draws its own (`_drawn_intensity`).
    """
    grid: list[float | None] = [None] if gen.intensity_range else [float(np.float32(t)) for t in gen.intensities]
    per_class = len(grid) * gen.repeats
    out: list[tuple[str, float | None, int]] = []
    for expression in check_expressions(gen.expressions):
        if expression == "neutral":
            out += [("neutral", 0.0, r) for r in range(per_class)]
        else:
            out += [(expression, t, r) for t in grid for r in range(gen.repeats)]
    return out


def _drawn_intensity(gen: GenerateConfig, identity_id: str, expression: str, repeat: int) -> float:
    """Uniform in generate.intensity_range, from a hash of the cell (float32-exact)."""
    low, high = gen.intensity_range or (1.0, 1.0)
    u = _seed("intensity", gen.seed, identity_id, expression, repeat) / 2**63
    return float(np.float32(low + (high - low) * u))


def photo_order(photos: list[str], identity_id: str, seed: int, n: int) -> list[str]:
    """n photos of one identity: a seeded permutation, cycled, so each is used before any repeats."""
    order = np.random.default_rng(_seed("photos", seed, identity_id)).permutation(len(photos))
    return [photos[order[k % len(photos)]] for k in range(n)]


def build_plan(
    gen: GenerateConfig,
    identities: list[PlannedIdentity],
    codes: np.ndarray,
    render_key: dict[str, Any],
    meta: dict[str, Any] | None = None,
    photos: dict[str, list[str]] | None = None,
) -> SweepPlan:
    """Expand identities x cells into items with deterministic ids, seeds and file names.

    `photos`: identity -> its photos (labels paths) that renders start from (generate.source_photos all).
    """
    _check_sweep(gen, identities, codes)
    sweep = cells(gen)
    items: list[PlanItem] = []
    for ident in identities:
        own = (photos or {}).get(ident.identity_id)
        sources = photo_order(own, ident.identity_id, gen.seed, len(sweep)) if own else [None] * len(sweep)
        for (expression, cell_intensity, repeat), source_image in zip(sweep, sources, strict=True):
            intensity = (
                _drawn_intensity(gen, ident.identity_id, expression, repeat)
                if cell_intensity is None
                else cell_intensity
            )
            items.append(_item(render_key["id"], ident, expression, intensity, repeat, source_image))
    h = hashlib.sha256(json.dumps(render_key, sort_keys=True).encode())
    for it in items:
        h.update(it.sample_id.encode())
    return SweepPlan(h.hexdigest(), render_key, identities, items, gen.shard_size, codes.astype(np.float32), meta or {})


def _check_sweep(gen: GenerateConfig, identities: list[PlannedIdentity], codes: np.ndarray) -> None:
    if not identities:
        raise PlanError(
            "the sweep has zero identities: check generate.identity_sources, generate.real_split (does that split "
            "have identities?), generate.max_real_identities, generate.n_novel and generate.identity_file"
        )
    if codes.shape[0] != len(identities):
        raise PlanError(f"{codes.shape[0]} identity codes for {len(identities)} identities")
    ids = [p.identity_id for p in identities]
    if len(set(ids)) != len(ids):
        raise PlanError(f"identity ids repeat in the sweep: {sorted({i for i in ids if ids.count(i) > 1})[:5]}")
    slots = len(gen.intensities) * gen.repeats
    if slots > 1 and gen.exp_jitter == 0 and gen.id_jitter == 0:
        raise PlanError(
            f"{slots} renders per identity and expression but generate.exp_jitter and generate.id_jitter are 0: "
            "they would be identical images; set a jitter > 0, or repeats=1 (and one intensity if neutral is swept)"
        )


def _item(
    render_id: str, ident: PlannedIdentity, expression: str, intensity: float, repeat: int, source_image: str | None
) -> PlanItem:
    """One planned render: its id (a hash of what defines it), file name and seeds."""
    fields = {
        "render": render_id,
        "identity": ident.identity_id,
        "source": ident.source,
        "expression": expression,
        "intensity": intensity,
        "repeat": repeat,
    }
    if source_image is not None:
        fields["source_image"] = source_image
    sid = make_sample_id(**fields)
    base = (render_id, ident.identity_id, expression, intensity, repeat)
    return PlanItem(
        sample_id=sid,
        file_name=f"images/{expression}/{sid}.png",
        identity_id=ident.identity_id,
        identity_source=ident.source,
        code_row=ident.code_row,
        expression=expression,
        expression_index=EXPRESSION_INDEX[expression],
        intensity=intensity,
        repeat=repeat,
        noise_seed=_seed("exp", *base),
        nuisance_seed=_seed("id", *base),
        source_image=source_image,
    )


def make_render_key(
    gen: GenerateConfig, checkpoint_sha256: str, data_key: str | None, resolution: int
) -> dict[str, Any]:
    """What decides the pixels besides the identity list; its hash prefixes every sample id."""
    key = {
        "render_version": RENDER_VERSION,
        "checkpoint_sha256": checkpoint_sha256,
        "data_key": data_key,
        "resolution": resolution,
        "expressions": list(gen.expressions),
        "intensities": [float(np.float32(t)) for t in gen.intensities],
        "repeats": gen.repeats,
        "seed": gen.seed,
        "exp_jitter": gen.exp_jitter,
        "id_jitter": gen.id_jitter,
        "composite": gen.composite,
    }
    # Added only off their defaults of old, so plans made before these options keep their ids.
    if gen.intensity_range is not None:
        key["intensity_range"] = [float(np.float32(t)) for t in gen.intensity_range]
    if gen.source_photos != "first_neutral":
        key["source_photos"] = gen.source_photos
    key["id"] = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return key


# --------------------------------------------------------------------------- identities


def real_identity_codes(
    encoder: torch.nn.Module, images: torch.Tensor, identity: list[str], device: torch.device, batch_size: int = 64
) -> dict[str, np.ndarray]:
    """Mean w_id over each person's images (uint8 NCHW at the model resolution)."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    with torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            x = to_model_range(images[start : start + batch_size], device)
            w_id, _ = encoder(x)
            for j, name in enumerate(identity[start : start + batch_size]):
                v = w_id[j].double().cpu()
                sums[name] = sums[name] + v if name in sums else v
                counts[name] = counts.get(name, 0) + 1
    return {k: (sums[k] / counts[k]).float().numpy() for k in sorted(sums)}


def _photos_of(labels: pd.DataFrame, identities: list[str], neutral_first: bool) -> pd.DataFrame:
    """The identities' photos as (identity, path), ordered by identity, [neutral first,] session, path."""
    rows = labels[labels["identity"].isin(identities)]
    order = pd.DataFrame(
        {
            "identity": rows["identity"],
            "not_neutral": (rows["expression"] != "neutral") if neutral_first else False,
            "session": rows["nuisance"].map(session_of) if "nuisance" in rows else 0,
            "path": rows["path"],
        }
    )
    return order.sort_values(["identity", "not_neutral", "session", "path"])


def base_image_paths(labels: pd.DataFrame, identities: list[str]) -> dict[str, str]:
    """The photo each identity's renders are composited over (checkpoints with an edit mask).

    Its neutral image of its first session when it has one (a swap then changes only the
    expression, and procedural ground truth is drawn in that same session), else its first image
    by path: a pure function of the labels table, so a plan always picks the same photos.
    """
    return dict(_photos_of(labels, identities, neutral_first=True).groupby("identity", sort=False)["path"].first())


def identity_photos(labels: pd.DataFrame, identities: list[str]) -> dict[str, list[str]]:
    """identity -> every photo of it (labels paths), by session then path: what its renders start from."""
    order = _photos_of(labels, identities, neutral_first=False)
    return {k: list(v) for k, v in order.groupby("identity", sort=True)["path"]}


def novel_identity_codes(codes: dict[str, torch.Tensor], n: int, seed: int) -> dict[str, np.ndarray]:
    """n identities from the fitted w_id Gaussian; identity k depends only on (seed, k), not on n."""
    return {
        f"novel-{seed}-{k:05d}": sample_identity(codes, torch.Generator().manual_seed(_seed("novel", seed, k))).numpy()
        for k in range(n)
    }


def read_identity_file(path: Path) -> list[str]:
    if not Path(path).is_file():
        raise PlanError(f"generate.identity_file not found: {path}")
    ids = [ln.strip() for ln in Path(path).read_text(encoding="utf-8").splitlines()]
    ids = [i for i in ids if i and not i.startswith("#")]
    return list(dict.fromkeys(ids))


# --------------------------------------------------------------------------- files


def save_plan(plan: SweepPlan, root: Path) -> Path:
    """plan.json (header + columnar items) and identity_codes.npy, both atomic; codes file hashed."""
    root.mkdir(parents=True, exist_ok=True)
    with atomic_path(root / CODES_FILE) as tmp, open(tmp, "wb") as f:
        np.save(f, plan.codes, allow_pickle=False)
    cols = {k: [getattr(it, k) for it in plan.items] for k in PlanItem.__dataclass_fields__}
    atomic_write_json(
        root / PLAN_FILE,
        {
            "format": PLAN_FORMAT,
            "key": plan.key,
            "render_key": plan.render_key,
            "shard_size": plan.shard_size,
            "n_items": len(plan.items),
            "n_shards": plan.n_shards,
            "class_counts": plan.class_counts(),
            "identities": [asdict(i) for i in plan.identities],
            "codes_sha256": sha256_file(root / CODES_FILE),
            "meta": plan.meta,
            "items": cols,
        },
    )
    return root / PLAN_FILE


def plan_key_of(root: Path) -> str | None:
    """The key of the plan saved in `root`, or None when there is none (or it is unreadable)."""
    try:
        return json.loads((Path(root) / PLAN_FILE).read_text(encoding="utf-8")).get("key")
    except (OSError, ValueError):
        return None


def update_plan_meta(root: Path, meta: dict[str, Any]) -> None:
    """Replace the meta (config, checkpoint path) of a saved plan, keeping its items and codes.

    A resumed or re-judged run may change settings outside the plan key (thresholds, batch size,
    runner); the saved codes are kept so the remaining shards render exactly as the first ones did.
    """
    path = Path(root) / PLAN_FILE
    raw = json.loads(path.read_text(encoding="utf-8"))
    if raw.get("meta") != meta:
        raw["meta"] = meta
        atomic_write_json(path, raw)


def load_plan(root: Path) -> SweepPlan:
    path = Path(root) / PLAN_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PlanError(f"{path}: cannot read the sweep plan: {exc}") from exc
    if raw.get("format") != PLAN_FORMAT:
        raise PlanError(f"{path}: not a fersynth sweep plan (format {raw.get('format')!r})")
    codes_path = Path(root) / CODES_FILE
    if not codes_path.is_file() or sha256_file(codes_path) != raw["codes_sha256"]:
        raise PlanError(f"{codes_path}: identity codes are missing or do not match plan.json")
    codes = np.load(codes_path, allow_pickle=False)
    cols = raw["items"]
    n = raw["n_items"]
    # Columns a plan of an older version lacks keep their defaults (source_image: None).
    items = [PlanItem(**{k: cols[k][i] for k in PlanItem.__dataclass_fields__ if k in cols}) for i in range(n)]
    identities = [PlannedIdentity(**d) for d in raw["identities"]]
    return SweepPlan(raw["key"], raw["render_key"], identities, items, raw["shard_size"], codes, raw.get("meta", {}))

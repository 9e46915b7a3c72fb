"""Plan a generation: resolve the config against the checkpoint, expand the sweep, stage it (`prepare`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from manifests.labels import read_labels
from pipeline.cache import load_tensors
from pipeline.calibration import apply_calibration
from pipeline.config import Config, config_to_dict, load_config, to_overrides
from pipeline.core.checkpoint import CheckpointError
from pipeline.core.data import dataset_key
from pipeline.core.device import resolve_device
from pipeline.core.legacy import checkpoint_config
from pipeline.core.trained import open_checkpoint
from pipeline.generate.plan import (
    NOVEL_SOURCE,
    PlanError,
    PlannedIdentity,
    SweepPlan,
    base_image_paths,
    build_plan,
    identity_photos,
    make_render_key,
    novel_identity_codes,
    read_identity_file,
    real_identity_codes,
)
from pipeline.generate.staging import Prepared, check_dataset_name, dataset_lock, preflight_generate, stage
from pipeline.quality.fid import require_fid_extractor
from pipeline.swaps import draws_over_photo


def resolve_config(
    cfg: Config | None, checkpoint: Path, overrides: list[str] | None = None
) -> tuple[Config, dict[str, Any]]:
    """The config to generate with, its thresholds calibrated, and how they were (`apply_calibration`).

    Without `cfg` the checkpoint's own config is used (plus `overrides`): the model and data always
    match then. With `cfg`, its model section must equal the checkpoint's (CheckpointError names the
    fields that differ) and its data must be the data the checkpoint was trained on. The checkpoint
    is read once per process (`open_checkpoint`): planning and rendering reuse it.
    """
    opened = open_checkpoint(Path(checkpoint))
    ckpt, saved = opened.payload, opened.config
    # Fields the user chose: in an override, or written in the config they passed.
    explicit = {
        o.split("=", 1)[0].strip().removeprefix("quality.") for o in overrides or [] if o.strip().startswith("quality.")
    }
    if cfg is not None:
        explicit |= set(cfg.quality.model_fields_set)
    if cfg is None:
        # A copy: calibration below writes into it, and the opened checkpoint's own config stays as stored.
        cfg = checkpoint_config(ckpt, str(checkpoint), overrides) if overrides else saved.model_copy(deep=True)
    elif overrides:
        cfg = load_config(None, [*to_overrides(config_to_dict(cfg)), *overrides])
    # Compare through today's Config, so a model field added since the checkpoint was written (with
    # its default) is not a mismatch; rendering rebuilds the networks from the checkpoint's config.
    theirs = config_to_dict(saved.model)
    mine = config_to_dict(cfg.model)
    diffs = [
        f"model.{k}: checkpoint={theirs.get(k)!r} config={mine.get(k)!r}"
        for k in sorted(theirs)
        if theirs.get(k) != mine.get(k)
    ]
    if diffs:
        raise CheckpointError(f"{checkpoint} was trained with another model config: " + "; ".join(diffs))
    return cfg, apply_calibration(cfg, ckpt, explicit)


def _check_data(cfg: Config, ckpt: dict[str, Any]) -> str:
    root = Path(cfg.data.root)
    if not (root / "labels.parquet").is_file():
        raise FileNotFoundError(
            f"data.root {root}: no labelled dataset (labels.parquet); generation needs the training data for real "
            "identities, ground truth and FID (make it with `fersynth data make` or `fersynth demo`)"
        )
    key = dataset_key(root)
    if ckpt.get("data_key") and ckpt["data_key"] != key:
        raise ValueError(
            f"data.root {root} is not the data the checkpoint was trained on (content key {key[:12]} != "
            f"{ckpt['data_key'][:12]}); point data.root at the training data"
        )
    return key


def _real_identities(cfg: Config, labels: pd.DataFrame, split_of: dict[str, str]) -> list[str]:
    """The real identities the sweep draws: a split's (generate.identity_sources real) and a file's (file)."""
    gen = cfg.generate
    wanted: list[str] = []
    if "real" in gen.identity_sources:
        names = sorted(labels.loc[labels["split"] == gen.real_split, "identity"].unique())
        wanted += names[: gen.max_real_identities] if gen.max_real_identities else names
    if "file" in gen.identity_sources:
        if gen.identity_file is None:
            raise PlanError("generate.identity_sources has 'file' but generate.identity_file is not set")
        listed = read_identity_file(gen.identity_file)
        unknown = [i for i in listed if i not in split_of]
        if unknown:
            raise PlanError(f"{gen.identity_file}: identity id(s) not in {cfg.data.root}: {unknown[:10]}")
        wanted += [i for i in listed if i not in wanted]
    return wanted


def make_plan(cfg: Config, checkpoint: Path, name: str | None = None, calibration: dict | None = None) -> SweepPlan:
    """Resolve identities (encoding real ones with the checkpoint's encoder) and expand the sweep.

    `calibration`: how the config's thresholds were calibrated (`resolve_config`), kept beside it."""
    gen = cfg.generate
    opened = open_checkpoint(Path(checkpoint))
    ckpt, sha = opened.payload, opened.sha256
    data_key = _check_data(cfg, ckpt)
    res = cfg.model.max_resolution
    labels, _ = read_labels(Path(cfg.data.root))
    split_of = dict(zip(labels["identity"], labels["split"], strict=True))
    wanted = _real_identities(cfg, labels, split_of)
    identities: list[PlannedIdentity] = []
    rows: list[np.ndarray] = []
    photos: dict[str, list[str]] = {}
    if wanted:
        device = resolve_device(gen.device, "generate.device")
        nets = opened.networks(device)
        images, frame = load_tensors(Path(cfg.data.root), res, cfg.data.cache_dir)
        sel = np.flatnonzero(frame["identity"].isin(wanted).to_numpy())
        codes = real_identity_codes(
            nets.encoder, images[torch.as_tensor(sel)], frame["identity"].iloc[sel].tolist(), device, gen.batch_size
        )
        # Each render of a real identity starts from one of its photos (generate.source_photos all), or
        # all of them are drawn over one neutral photo of it (first_neutral, when drawn over a photo).
        over_photo = draws_over_photo(gen.composite, nets.generator_ema.has_mask)
        every_photo = gen.source_photos == "all"
        photos = identity_photos(labels, wanted) if every_photo else {}
        bases = base_image_paths(labels, wanted) if over_photo and not every_photo else {}
        for ident in wanted:
            identities.append(
                PlannedIdentity(ident, f"real:{split_of[ident]}", split_of[ident], len(rows), bases.get(ident))
            )
            rows.append(codes[ident])
    if "novel" in gen.identity_sources:
        if gen.n_novel == 0:
            raise PlanError("generate.identity_sources has 'novel' but generate.n_novel is 0")
        for ident, code in novel_identity_codes(ckpt["codes"], gen.n_novel, gen.seed).items():
            identities.append(PlannedIdentity(ident, NOVEL_SOURCE, None, len(rows)))
            rows.append(code)
    codes_arr = np.stack(rows).astype(np.float32) if rows else np.zeros((0, cfg.model.id_dim), np.float32)
    render_key = make_render_key(gen, sha, data_key, res)
    meta = {
        "name": name,
        "checkpoint": {"path": str(Path(checkpoint).resolve()), "sha256": sha, "step": int(ckpt["global_step"])},
        "data": {"root": str(Path(cfg.data.root).resolve()), "key": data_key},
        "config": config_to_dict(cfg),
        "calibration": calibration or {},
    }
    return build_plan(gen, identities, codes_arr, render_key, meta, photos)


def prepare(
    cfg: Config | None,
    checkpoint: Path,
    out: Path,
    *,
    name: str | None = None,
    overwrite: bool = False,
    overrides: list[str] | None = None,
    calibration: dict[str, Any] | None = None,
) -> Prepared:
    """Plan the sweep and set up (or resume) its staging folder; never touches a published dataset.

    `calibration` given: `cfg` was resolved already (`resolve_config`; the flow does that once) and this
    is how. Returns holding the dataset's one-writer lock (taken before planning when the name is known,
    right after it otherwise); the caller gives it back with `Prepared.release()` once published.
    """
    checkpoint, out = Path(checkpoint), Path(out)
    preflight_generate(checkpoint, out)
    if calibration is None or cfg is None:
        cfg, calibration = resolve_config(cfg, checkpoint, overrides)
    require_fid_extractor(cfg.quality.fid_weights, cfg.quality.fid_torch_fidelity_weights)  # before any rendering
    name = name or cfg.generate.name
    lock = dataset_lock(out, check_dataset_name(name)).acquire() if name else None
    try:
        plan = make_plan(cfg, checkpoint, calibration=calibration)
        name = check_dataset_name(name or f"fersynth-{plan.key[:10]}")
        lock = lock or dataset_lock(out, name).acquire()
        prep = stage(cfg, plan, out, name, overwrite)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    prep.lock = lock
    return prep

"""`make_dataset`: render the procedural face dataset to PNGs plus a validated labels table.

Layout of the output folder:
    dataset.json         fingerprint (kind + config hash + renderer version), written first
    images/<id>/<sample_id>.png
    labels.parquet       manifests.labels contract, written last
    contact_sheet.png    identities x expressions, labelled, for checking by eye

Every image is a pure function of (config, identity, expression, intensity, sample), so a run
that was interrupted is resumed by rendering only the files that are missing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import multiprocessing as mp
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from manifests.labels import LABELS_FILE, read_labels, write_labels
from pipeline.config import ProceduralConfig, config_to_dict
from pipeline.expressions import EXPRESSION_INDEX
from pipeline.io_utils import atomic_write_bytes, atomic_write_json, remove_owned, sha256_bytes, sha256_file
from pipeline.locks import writer_lock
from pipeline.procedural.aus import expression_aus
from pipeline.procedural.contact_sheet import grid_image, save_png
from pipeline.procedural.factors import IdentityFactors, sample_identity
from pipeline.procedural.nuisance import Nuisance, nuisance_rng
from pipeline.procedural.render import RENDERER_VERSION, render_face, render_truth
from pipeline.splits import split_identities

FINGERPRINT_FILE = "dataset.json"
CONTACT_SHEET = "contact_sheet.png"
KIND = "procedural"
# What make_dataset writes; `overwrite` removes only these, never other files in the folder.
_OWNED = ("images", LABELS_FILE, FINGERPRINT_FILE, CONTACT_SHEET)


@dataclass(frozen=True)
class _Item:
    sample_id: str
    rel_path: str
    identity: str
    identity_index: int
    expression: str
    intensity: float  # already rounded to float32, the precision the labels table keeps
    sample: int
    factors_json: str
    nuisance_json: str


def identity_name(index: int) -> str:
    return f"id{index:05d}"


def sample_id(identity: str, expression: str, intensity: float, sample: int) -> str:
    return f"{identity}-{expression}-{round(intensity * 100):03d}-{sample}"


def fingerprint(cfg: ProceduralConfig) -> dict[str, Any]:
    """What identifies a procedural dataset: same fingerprint <=> same images."""
    cfg_dict = config_to_dict(cfg)
    canon = json.dumps(cfg_dict, sort_keys=True, separators=(",", ":"))
    return {
        "kind": KIND,
        "renderer_version": RENDERER_VERSION,
        "config_sha256": hashlib.sha256(canon.encode()).hexdigest(),
        "config": cfg_dict,
    }


def _cells(cfg: ProceduralConfig) -> list[tuple[str, float]]:
    cells: list[tuple[str, float]] = []
    for expression in cfg.expressions:
        if expression == "neutral":
            cells.append(("neutral", 0.0))
        else:
            # float32 is what the labels table stores; rendering from that value lets
            # render_truth(row) reproduce the image bit for bit.
            cells.extend((expression, float(np.float32(t))) for t in cfg.intensities)
    return cells


def plan(cfg: ProceduralConfig) -> list[_Item]:
    """Every image of the dataset, in a fixed order, with its identity and nuisance draws."""
    cells = _cells(cfg)
    ids = [sample_id("x", e, t, 0) for e, t in cells]
    if len(set(ids)) != len(ids):
        raise ValueError(
            f"procedural.intensities {cfg.intensities}: values must differ by at least 0.01 "
            "(they name the images) and not repeat"
        )
    items: list[_Item] = []
    for index in range(cfg.n_identities):
        identity = identity_name(index)
        factors = sample_identity(cfg.seed, index).to_json()
        # Like real expression datasets (KDEF, CK+), each identity sits for `samples_per_cell`
        # sessions: pose, light and background are fixed within a session and only the expression
        # (and the sensor noise) changes. So every identity-x-expression swap of a session has its
        # exact true image in the dataset, which training and evaluation score against.
        sessions = [
            dataclasses.replace(
                Nuisance.sample(nuisance_rng(cfg.seed, index, "neutral", 0.0, k), cfg.nuisance_strength), session=k
            )
            for k in range(cfg.samples_per_cell)
        ]
        for expression, intensity in cells:
            for k in range(cfg.samples_per_cell):
                rng = nuisance_rng(cfg.seed, index, expression, intensity, k)
                noise_seed = Nuisance.sample(rng, cfg.nuisance_strength).noise_seed
                nuisance = dataclasses.replace(sessions[k], noise_seed=noise_seed)
                sid = sample_id(identity, expression, intensity, k)
                items.append(
                    _Item(
                        sid,
                        f"images/{identity}/{sid}.png",
                        identity,
                        index,
                        expression,
                        intensity,
                        k,
                        factors,
                        nuisance.to_json(),
                    )
                )
    return items


def encode_png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    # Fixed settings and no metadata: the same pixels always give the same file bytes.
    Image.fromarray(image).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _render_item(args: tuple[_Item, int, str]) -> tuple[str, str]:
    item, resolution, root = args
    image = render_face(
        IdentityFactors.from_json(item.factors_json),
        expression_aus(item.expression, item.intensity),
        Nuisance.from_json(item.nuisance_json),
        resolution,
    )
    data = encode_png(image)
    atomic_write_bytes(Path(root) / item.rel_path, data)
    return item.sample_id, sha256_bytes(data)


def _check_target(out: Path, fp: dict[str, Any], overwrite: bool) -> bool:
    """Prepare `out`; returns True when it already holds (part of) this same dataset."""
    if not out.exists():
        return False
    if not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder")
    fp_path = out / FINGERPRINT_FILE
    same = False
    if fp_path.is_file():
        try:
            old = json.loads(fp_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            old = {}
        same = all(old.get(k) == fp[k] for k in ("kind", "renderer_version", "config_sha256"))
    if same:
        return True
    if not any(out.iterdir()):
        return False
    if not overwrite:
        what = "a different dataset" if fp_path.is_file() else "files that are not this dataset"
        raise FileExistsError(f"{out} already holds {what}; choose another --out or pass --overwrite")
    remove_owned(out, _OWNED)
    return False


def _pick_sheet_identities(splits: dict[str, str], n: int = 8) -> list[str]:
    """Up to n identities, alternating splits so the sheet shows train, val and test faces."""
    by_split = {s: sorted(i for i, v in splits.items() if v == s) for s in ("train", "val", "test")}
    picked: list[str] = []
    while len(picked) < n and any(by_split.values()):
        for s in ("train", "val", "test", "train"):
            if by_split[s] and len(picked) < n:
                picked.append(by_split[s].pop(0))
    return sorted(picked)


def write_contact_sheet(df: pd.DataFrame, out: Path, cell: int = 112) -> Path:
    """Rows = up to 8 identities (mixed splits), columns = expressions at their highest intensity."""
    splits = dict(zip(df["identity"], df["split"], strict=True))
    expressions = list(dict.fromkeys(df["expression"]))
    render_res = 1 << max(4, (cell - 1).bit_length())  # smallest power of two >= cell
    rows, labels = [], []
    for identity in _pick_sheet_identities(splits):
        sub = df[df["identity"] == identity]
        row = []
        for expression in expressions:
            cand = sub[sub["expression"] == expression].sort_values(["intensity", "sample_id"], ascending=[False, True])
            r = cand.iloc[0]
            row.append(
                render_truth(r["identity_factors"], expression, float(r["intensity"]), r["nuisance"], render_res)
            )
        rows.append(row)
        labels.append(f"{identity} ({splits[identity]})")
    top = {e: float(df.loc[df["expression"] == e, "intensity"].max()) for e in expressions}
    col_labels = [f"{e} {top[e]:.1f}" for e in expressions]
    return save_png(grid_image(rows, labels, col_labels, cell=cell), out)


def _progress_iter(it: Iterator[tuple[str, str]], total: int, enabled: bool) -> Iterator[tuple[str, str]]:
    if not enabled:
        yield from it
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("rendering"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task("render", total=total)
        for x in it:
            bar.advance(task)
            yield x


def make_dataset(
    cfg: ProceduralConfig, out: Path, overwrite: bool = False, workers: int | None = None, progress: bool = False
) -> Path:
    """Render the procedural dataset described by `cfg` into `out`; returns the labels file path.

    Refuses (FileExistsError) to write into a non-empty folder that holds something else unless
    `overwrite`; resumes an interrupted run of the same config by rendering only missing images.
    Holds the folder's one-writer lock (pipeline.locks) throughout: a second run into `out` refuses.
    """
    out = Path(out)
    items = plan(cfg)  # validates the config combination before touching the disk
    with writer_lock(out, "data make"):
        return _make_dataset(cfg, out, items, overwrite, workers, progress)


def _make_dataset(
    cfg: ProceduralConfig, out: Path, items: list[_Item], overwrite: bool, workers: int | None, progress: bool
) -> Path:
    identities = [identity_name(i) for i in range(cfg.n_identities)]
    splits = split_identities(identities, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    fp = fingerprint(cfg)
    resuming = _check_target(out, fp, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    if not resuming:
        atomic_write_json(out / FINGERPRINT_FILE, fp)

    hashes: dict[str, str] = {}
    todo: list[_Item] = []
    for item in items:
        path = out / item.rel_path
        if resuming and path.is_file():
            hashes[item.sample_id] = sha256_file(path)
        else:
            todo.append(item)

    n_workers = max(1, workers if workers is not None else (os.cpu_count() or 1))
    n_workers = min(n_workers, max(1, len(todo)))
    jobs = ((item, cfg.resolution, str(out)) for item in todo)
    if n_workers == 1 or len(todo) < 32:
        results: Iterator[tuple[str, str]] = map(_render_item, jobs)
        hashes.update(_progress_iter(results, len(todo), progress))
    else:
        # spawn, not fork: the parent may hold threads (progress bar, torch) that fork copies badly.
        with mp.get_context("spawn").Pool(n_workers) as pool:
            results = pool.imap_unordered(_render_item, jobs, chunksize=16)
            hashes.update(_progress_iter(results, len(todo), progress))

    rows = [
        {
            "sample_id": it.sample_id,
            "path": it.rel_path,
            "identity": it.identity,
            "expression": it.expression,
            "expression_index": EXPRESSION_INDEX[it.expression],
            "intensity": it.intensity,
            "aus": expression_aus(it.expression, it.intensity).tolist(),
            "identity_factors": it.factors_json,
            "nuisance": it.nuisance_json,
            "split": splits[it.identity],
            "sha256": hashes[it.sample_id],
            "width": cfg.resolution,
            "height": cfg.resolution,
            "source": KIND,
            "original_path": None,
        }
        for it in items
    ]
    df = pd.DataFrame(rows)
    meta = {"kind": KIND, "config": fp["config"], "resolution": cfg.resolution, "renderer_version": RENDERER_VERSION}
    labels = write_labels(out, df, meta)
    write_contact_sheet(df, out / CONTACT_SHEET)
    return labels


def summarize(root: Path) -> dict[str, Any]:
    """Counts per split and expression of a made dataset (for the CLI's closing summary)."""
    df, meta = read_labels(root)
    return {
        "images": len(df),
        "identities": int(df["identity"].nunique()),
        "per_split": {s: int(n) for s, n in df["split"].value_counts().sort_index().items()},
        "identities_per_split": {s: int(n) for s, n in df.groupby("split")["identity"].nunique().sort_index().items()},
        "per_expression": {e: int(n) for e, n in df["expression"].value_counts().sort_index().items()},
        "resolution": meta.get("resolution"),
    }

"""What the tests share: the repository root, a temporary Prefect home and one Prefect server, offline
weights, tiny labelled data, a tiny trained checkpoint, an ideal judge, and builders of small datasets
(a finished manifest, a procedural stand-in for real photos, a generated-dataset layout made of its
images).

Test modules import the constants and builders from here (`from conftest import REPO, build_dataset`);
no test module imports another.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from local_prefect import prefect_server as start_prefect_server
from PIL import Image

from manifests.labels import read_labels
from manifests.schema import make_sample_id
from manifests.writer import finalize, write_shard
from pipeline.config import QualityConfig, config_to_dict, load_config
from pipeline.expressions import EXPRESSIONS
from pipeline.io_utils import sha256_file
from pipeline.procedural.dataset import make_dataset
from pipeline.quality.gates import evaluate_gates, gate_inputs_from_manifest
from pipeline.train.loop import Trainer
from pipeline.weights import WEIGHTS_DIR_ENV, find_weight

REPO = Path(__file__).resolve().parents[1]
# This project's machines keep the weights beside the checkout; the product's own lookup does the rest.
os.environ.setdefault(WEIGHTS_DIR_ENV, str(REPO.parent / "shared" / "weights"))
os.environ.setdefault("DO_NOT_TRACK", "1")


def _local_weight(key: str) -> Path:
    look = find_weight(key)
    if look.path is None:
        pytest.skip(look.missing_message())
    return look.path


@pytest.fixture(autouse=True, scope="session")
def _prefect_home(tmp_path_factory: pytest.TempPathFactory) -> None:
    # Prefect writes its database under PREFECT_HOME; keep tests away from the user's.
    home = tmp_path_factory.mktemp("prefect-home")
    os.environ["PREFECT_HOME"] = str(home)
    os.environ.setdefault("PREFECT_API_DATABASE_CONNECTION_URL", f"sqlite+aiosqlite:///{home}/prefect.db")
    # The flow tests start Prefect's ephemeral server; its 20 s default start-up wait timed out on a
    # 2-core machine busy with a training run (the tests themselves were fine).
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The API URL of one real `prefect server` for the whole session (in the session's PREFECT_HOME)."""
    log = tmp_path_factory.mktemp("prefect-server") / "server.log"
    with start_prefect_server(log, REPO) as url:
        yield url


@pytest.fixture
def prefect_api(prefect_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """This test's flows, clients and child processes talk to the session's Prefect server."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch.setenv("PREFECT_API_URL", prefect_server)
    with temporary_settings({PREFECT_API_URL: prefect_server}):
        yield prefect_server


@pytest.fixture
def facenet_weights() -> Path:
    return _local_weight("facenet")


@pytest.fixture
def fid_weights() -> Path:
    return _local_weight("fid")


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The final checkpoint of a tiny training run (configs/tiny.yaml), trained once per test session;
    the data it was trained on is `tiny.parents[2] / "data"`."""
    base = tmp_path_factory.mktemp("tiny")
    data = base / "data"
    cfg = load_config(REPO / "configs" / "tiny.yaml", [f"data.root={data}", f"train.out_dir={base / 'run'}"])
    make_dataset(cfg.procedural, data, workers=1)
    return Trainer(cfg).train()


@pytest.fixture
def ideal_classifier(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tiny GAN cannot make recognisable expressions; stand in a classifier that always agrees."""
    import pipeline.generate.checks as checks_mod

    def fake(classifier, images, target_idx, threshold=0.5, batch_size=64, device="auto"):
        t = np.asarray(target_idx)
        return t, np.full(len(t), 0.9), np.ones(len(t), bool)

    monkeypatch.setattr(checks_mod, "expression_scores", fake)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny procedural labelled dataset (configs/tiny.yaml) with two validation identities, so
    thresholds can be calibrated (same vs different identity); made once per test session."""
    cfg = load_config(REPO / "configs" / "tiny.yaml", ["procedural.val_fraction=0.25"])
    root = tmp_path_factory.mktemp("data") / "tiny"
    make_dataset(cfg.procedural, root, workers=1)
    return root


# --------------------------------------------------------------------------- small datasets

CKPT = "c" * 64
N_SHARDS = 2
DATASET_META: dict[str, Any] = {
    "run_id": "run-test",
    "checkpoint": {"sha256": CKPT, "step": 1200},
    "training_data": {"labels_sha256": "d" * 64},
    "splits": {"train": 3, "val": 1, "test": 1},
    "config": {"render": {"intensities": [0.5, 1.0]}},
}
METRICS = {"fid": 41.5, "kid_mean": 0.012, "n_real": 8, "n_fake": 8}
THRESHOLDS = QualityConfig(usefulness=False, pass_rate_floor=0.5, class_balance_tolerance=10.0, ssim_floor=0.0)


def final_meta(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """What generation finalizes a dataset with: the gates computed from these rows, metrics and thresholds."""
    gates = evaluate_gates(gate_inputs_from_manifest(pd.DataFrame(rows)), METRICS, THRESHOLDS).to_dict()["gates"]
    return {**DATASET_META, "gates": gates, "metrics": METRICS, "thresholds": config_to_dict(THRESHOLDS)}


def make_rows(root: Path, n: int = 8) -> list[dict[str, Any]]:
    """n small PNGs on disk and their manifest rows (shard filled by the writer)."""
    rows = []
    for k in range(n):
        expr = EXPRESSIONS[k % len(EXPRESSIONS)]
        plan = {"identity": f"id{k % 3}", "expression": expr, "intensity": 1.0, "nuisance_seed": k, "noise_seed": k}
        sid = make_sample_id(**plan)
        rel = f"images/{expr}/{sid}.png"
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (16, 12), (k * 20, 100, 200 - k * 10)).save(path)
        id_pass = None if k == 0 else k % 4 != 3
        rows.append(
            {
                "sample_id": sid,
                "file_name": rel,
                "sha256": sha256_file(path),
                "width": 16,
                "height": 12,
                "identity_id": plan["identity"],
                "identity_source": "novel" if k % 2 else "real:test",
                "source_image": None if k % 2 else f"faces/{k:03d}.png",
                "expression": expr,
                "expression_index": EXPRESSIONS.index(expr),
                "intensity": 1.0,
                "nuisance_seed": k,
                "noise_seed": k,
                "checkpoint_sha256": CKPT,
                "checkpoint_step": 1200,
                "run_id": "run-test",
                "identity_score": None if k == 0 else 0.5 + k / 20,
                "identity_pass": id_pass,
                "expression_pred": expr,
                "expression_p_target": 0.9,
                "expression_pass": True,
                "ssim_truth": 0.8 if k % 2 == 0 else None,
                "face_found": True,
                "all_pass": id_pass is not False,
            }
        )
    return rows


def build_dataset(root: Path, n: int = 8, finalize_it: bool = True) -> list[dict[str, Any]]:
    rows = make_rows(root, n)
    half = n // N_SHARDS
    for i in range(N_SHARDS):
        write_shard(root, i, N_SHARDS, rows[i * half : (i + 1) * half], DATASET_META)
    if finalize_it:
        finalize(root, final_meta(rows))
    return rows


def make_real(root: Path, seed: int = 0, n_identities: int = 8) -> Path:
    """A tiny procedural labelled dataset (configs/tiny.yaml settings) standing in for real photos."""
    cfg = load_config(
        REPO / "configs" / "tiny.yaml",
        [f"procedural.seed={seed}", f"procedural.n_identities={n_identities}", "procedural.intensities=[0.5, 1.0]"],
    )
    make_dataset(cfg.procedural, root, workers=1)
    return root


def manifest_from_labels(
    labels_root: Path,
    out: Path,
    *,
    fail_every: int = 0,
    n_shards: int = 2,
    split: str | None = "train",
    real_ids: bool = False,
    novel_every: int = 0,
) -> Path:
    """A finished generated-dataset layout whose 'renders' are the images of a labelled dataset.

    Every `fail_every`-th row is marked failed (expression check), to exercise gate filtering.
    Identities are novel ('syn-<identity>') unless `real_ids`: then the labels' own identities
    (`real:<split>`), except every `novel_every`-th row.
    """
    df, _ = read_labels(labels_root)
    if split is not None:
        df = df[df["split"] == split]
    rows: list[dict[str, Any]] = []
    for k, r in enumerate(df.itertuples(index=False)):
        sid = make_sample_id(identity=r.identity, expression=r.expression, intensity=r.intensity, k=k)
        rel = f"images/{r.expression}/{sid}.png"
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(labels_root / r.path, out / rel)
        ok = not (fail_every and k % fail_every == fail_every - 1)
        real = real_ids and not (novel_every and k % novel_every == novel_every - 1)
        rows.append(
            {
                "sample_id": sid,
                "file_name": rel,
                "sha256": r.sha256,
                "width": int(r.width),
                "height": int(r.height),
                "identity_id": r.identity if real else f"syn-{r.identity}",
                "identity_source": f"real:{r.split}" if real else "novel",
                "source_image": r.path if real else None,
                "expression": r.expression,
                "expression_index": EXPRESSIONS.index(r.expression),
                "intensity": float(r.intensity),
                "nuisance_seed": k,
                "noise_seed": k,
                "checkpoint_sha256": CKPT,
                "checkpoint_step": 100,
                "run_id": "run-test",
                "identity_score": 0.9,
                "identity_pass": True,
                "expression_pred": r.expression if ok else "neutral",
                "expression_p_target": 0.9 if ok else 0.1,
                "expression_pass": ok,
                "ssim_truth": None,
                "face_found": None,
                "all_pass": ok,
            }
        )
    meta = {"run_id": "run-test", "checkpoint": {"sha256": CKPT, "step": 100}}
    per = -(-len(rows) // n_shards)
    for i in range(n_shards):
        write_shard(out, i, n_shards, rows[i * per : (i + 1) * per], meta)
    finalize(out, {**meta, "gates": [], "metrics": {}}, n_shards=n_shards, card=False)
    return out

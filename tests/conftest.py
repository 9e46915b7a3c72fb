"""Shared test fixtures: temporary Prefect home, offline weights, a tiny trained checkpoint, an ideal judge."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

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


@pytest.fixture
def facenet_weights() -> Path:
    return _local_weight("facenet")


@pytest.fixture
def fid_weights() -> Path:
    return _local_weight("fid")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The final checkpoint of a tiny training run (configs/tiny.yaml), trained once per test module."""
    from pipeline.config import load_config
    from pipeline.procedural.dataset import make_dataset
    from pipeline.train.loop import Trainer

    base = tmp_path_factory.mktemp("tiny")
    data = base / "data"
    cfg = load_config(REPO / "configs" / "tiny.yaml", [f"data.root={data}", f"train.out_dir={base / 'run'}"])
    make_dataset(cfg.procedural, data, workers=1)
    return Trainer(cfg).train()


@pytest.fixture
def ideal_classifier(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tiny GAN cannot make recognisable expressions; stand in a classifier that always agrees."""
    import pipeline.generate.shards as shards_mod

    def fake(classifier, images, target_idx, threshold=0.5, batch_size=64, device="auto"):
        t = np.asarray(target_idx)
        return t, np.full(len(t), 0.9), np.ones(len(t), bool)

    monkeypatch.setattr(shards_mod, "expression_scores", fake)

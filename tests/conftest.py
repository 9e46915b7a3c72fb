"""Shared test fixtures: temporary Prefect home, offline weights, deterministic torch."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
WEIGHTS_DIR = Path(os.environ.get("FERSYNTH_WEIGHTS_DIR", REPO.parent / "shared" / "weights"))
FACENET_WEIGHTS = WEIGHTS_DIR / "facenet_inception_resnet_v1_vggface2.pt"
FID_WEIGHTS = WEIGHTS_DIR / "fid_inception_v3_torchscript.pt"

os.environ.setdefault("DO_NOT_TRACK", "1")


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
    if not FACENET_WEIGHTS.is_file():
        pytest.skip(f"FaceNet weights not found at {FACENET_WEIGHTS} (set FERSYNTH_WEIGHTS_DIR)")
    return FACENET_WEIGHTS


@pytest.fixture
def fid_weights() -> Path:
    if not FID_WEIGHTS.is_file():
        pytest.skip(f"FID Inception weights not found at {FID_WEIGHTS} (set FERSYNTH_WEIGHTS_DIR)")
    return FID_WEIGHTS

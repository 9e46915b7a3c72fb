"""TSTR: every arm trains and is scored on the real test split; table, plot and artifacts appear.

Tiny data and a few steps: these tests check the plumbing (right data in each arm, right labels
reaching the metrics), not that synthetic data helps; at this budget every arm sits near chance.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from test_downstream import make_real, manifest_from_labels
from typer.testing import CliRunner

from pipeline.config import TstrConfig
from pipeline.downstream import LabelledDataset
from pipeline.expressions import EXPRESSIONS
from pipeline.tstr import ALL_ARMS, CONTROL_ARM, arm_dataset, evaluate

FAST = ["tstr.steps=3", "tstr.batch_size=16", "tstr.image_size=32", "tstr.num_workers=0", "tstr.n_small_identities=2"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("tstr")
    real = make_real(base / "real", seed=0, n_identities=12)
    # "Synthetic": another procedural population (other seed), written as a generated manifest.
    syn = manifest_from_labels(
        make_real(base / "other", seed=1, n_identities=12), base / "syn", fail_every=5, split=None
    )
    return real, syn


def test_cli_runs_every_arm_and_writes_the_report(data: tuple[Path, Path], tmp_path: Path) -> None:
    from pipeline.cli import app

    real, syn = data
    out = tmp_path / "report"
    args = [
        "tstr",
        "--synthetic",
        str(syn),
        "--real",
        str(real),
        "--out",
        str(out),
        "--set",
        "tstr.control_shuffled=true",
    ]
    for s in FAST:
        args += ["--set", s]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out / "tstr.csv")
    assert list(table["arm"]) == [*ALL_ARMS, CONTROL_ARM]
    assert table["accuracy"].between(0, 1).all() and table["macro_f1"].between(0, 1).all()
    by = table.set_index("arm")
    assert by.loc["synthetic", "n_real"] == 0 and by.loc["synthetic", "n_synthetic"] > 0
    assert by.loc["real", "n_synthetic"] == 0 and by.loc["real", "n_real_identities"] == 8
    assert by.loc["real-small", "n_real_identities"] == by.loc["real-small+synthetic", "n_real_identities"] == 2
    assert by.loc["real+synthetic", "n_train"] == by.loc["real", "n_train"] + by.loc["synthetic", "n_train"]
    # Shuffled labels must not beat correct labels by much (a leak would show up here).
    assert by.loc[CONTROL_ARM, "accuracy"] <= by.drop(CONTROL_ARM)["accuracy"].max() + 0.25
    md = (out / "tstr.md").read_text()
    assert all(f"| {arm} |" in md for arm in ALL_ARMS)
    assert (out / "tstr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_labels_reach_the_arms_and_the_metrics(data: tuple[Path, Path]) -> None:
    real, syn = data
    cfg = TstrConfig(image_size=16, n_small_identities=2, require_pass=True)
    ds, counts = arm_dataset("synthetic", syn, real, cfg)
    assert counts["n_synthetic"] == len(ds) and all(ds[i][1] == ds.labels[i] for i in range(0, len(ds), 7))
    shuffled, _ = arm_dataset(CONTROL_ARM, None, real, cfg)
    labels = [shuffled[i][1] for i in range(len(shuffled))]
    assert sorted(labels) == sorted(shuffled.base.labels.tolist()) and labels != shuffled.base.labels.tolist()

    # A model that always says "happy" scores exactly the share of happy test images.
    test = LabelledDataset(real, split="test", image_size=16)

    class Constant(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.one_hot(torch.full((x.shape[0],), 1), len(EXPRESSIONS)).float()

    m = evaluate(Constant(), test, torch.device("cpu"), 8)
    assert m["accuracy"] == pytest.approx((test.labels == 1).mean())
    assert m["per_class_accuracy"]["happy"] == 1.0 and m["per_class_accuracy"]["sad"] == 0.0


def test_flow_publishes_artifacts(data: tuple[Path, Path], tmp_path: Path) -> None:
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, FlowRunFilter, TaskRunFilter
    from prefect.client.schemas.sorting import ArtifactSort
    from prefect.testing.utilities import prefect_test_harness

    from flows.tstr import tstr_flow
    from pipeline.config import config_to_dict, load_config

    real, syn = data
    cfg = load_config(None, [*FAST, "tstr.steps=1", "tstr.arms=[synthetic, real-small+synthetic]"])
    with prefect_test_harness(server_startup_timeout=60):
        result = tstr_flow(str(syn), str(real), out=str(tmp_path / "r"), cfg_dict=config_to_dict(cfg))
        with get_client(sync_client=True) as client:
            # Every filter spelled out: this Prefect's server rejects the client's null defaults (422).
            found = {
                a.key: a
                for a in client.read_artifacts(
                    artifact_filter=ArtifactFilter(),
                    flow_run_filter=FlowRunFilter(),
                    task_run_filter=TaskRunFilter(),
                    sort=ArtifactSort.CREATED_DESC,
                    offset=0,
                    limit=50,
                )
            }
    assert [r["arm"] for r in result["rows"]] == ["synthetic", "real-small+synthetic"]
    assert {"tstr-table", "tstr-report", "tstr-plot"} <= set(found), sorted(found)
    assert "data:image/png;base64," in found["tstr-plot"].data
    assert Path(result["files"]["csv"]).is_file()

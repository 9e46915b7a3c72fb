"""Target codes: expression anchors per (class, intensity) and how intensities between them are drawn."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from pipeline.core.codes import expression_target, fit_target_codes
from pipeline.core.data import TrainData


class _MeanColour(nn.Module):
    """Stands in for the encoder: both codes are an image's mean colour."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = x.mean((2, 3))
        return m, m


def _data(rows: list[tuple[int, int, int, int]]) -> TrainData:
    """rows: (identity, expression, intensity in hundredths, grey level of the whole image)."""
    images = torch.stack([torch.full((3, 4, 4), g, dtype=torch.uint8) for *_, g in rows])
    return TrainData(
        images=images,
        frame=pd.DataFrame({"i": range(len(rows))}),
        labels=torch.tensor([r[1] for r in rows]),
        identity=torch.tensor([r[0] for r in rows]),
        identity_names=sorted({f"id{r[0]}" for r in rows}),
        truth_key={},
        session=torch.zeros(len(rows), dtype=torch.long),
        intensity_code=torch.tensor([r[2] for r in rows]),
    )


def test_anchors_are_the_mean_code_of_each_class_at_each_intensity() -> None:
    data = _data([(0, 0, 0, 0), (1, 0, 0, 0), (0, 1, 50, 100), (1, 1, 50, 120), (0, 1, 100, 200), (1, 2, 100, 255)])
    codes = fit_target_codes(_MeanColour(), data, 3, torch.device("cpu"))
    grey = lambda g: torch.full((3,), g / 127.5 - 1.0)  # noqa: E731  (what _MeanColour returns)
    assert codes["exp_levels"].tolist() == [0.5, 1.0]
    torch.testing.assert_close(codes["exp_anchors"][1, 0], grey(110))  # mean of the two half-intensity images
    torch.testing.assert_close(codes["exp_anchors"][1, 1], grey(200))
    torch.testing.assert_close(codes["exp_anchors"][2, 1], grey(255))
    assert codes["exp_anchor_present"].tolist() == [[False, False], [True, True], [False, True]]
    torch.testing.assert_close(codes["exp_centroids"][1], grey(200))  # the top intensity, as before
    torch.testing.assert_close(codes["exp_neutral"], grey(0))


def _anchored() -> dict[str, torch.Tensor]:
    a, b, c = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 4.0]), torch.tensor([6.0, 6.0])
    return {
        "exp_neutral": torch.zeros(2),
        "exp_centroids": torch.stack([torch.zeros(2), b, c]),
        "exp_levels": torch.tensor([0.5, 1.0]),
        "exp_anchors": torch.stack([torch.zeros(2, 2), torch.stack([a, b]), torch.stack([torch.zeros(2), c])]),
        "exp_anchor_present": torch.tensor([[False, False], [True, True], [False, True]]),
    }


def test_intensity_runs_from_neutral_through_every_anchor() -> None:
    codes = _anchored()
    t = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0, 1.25])
    got = expression_target(codes, torch.ones(6, dtype=torch.long), t)
    # 0 -> neutral (0, 0); 0.5 -> the half anchor (2, 0); 1.0 -> the full one (0, 4); past 1 the last
    # segment goes on. A straight line from neutral to the full anchor would give (0, 2) at 0.5.
    want = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [1.0, 2.0], [0.0, 4.0], [-1.0, 6.0]])
    torch.testing.assert_close(got, want)
    # A class with only a full-intensity anchor interpolates straight from neutral; neutral stays neutral.
    mixed = expression_target(codes, torch.tensor([2, 0, 0]), torch.tensor([0.5, 0.0, 1.0]))
    torch.testing.assert_close(mixed, torch.tensor([[3.0, 3.0], [0.0, 0.0], [0.0, 0.0]]))


def test_checkpoints_without_anchors_keep_the_straight_line() -> None:
    codes = {k: v for k, v in _anchored().items() if not k.startswith("exp_a") and k != "exp_levels"}
    got = expression_target(codes, torch.tensor([1, 2]), torch.tensor([0.5, 0.5]))
    torch.testing.assert_close(got, torch.tensor([[0.0, 2.0], [3.0, 3.0]]))


def test_refit_codes_adds_anchors_and_refuses_other_data(tmp_path: Path) -> None:
    from pipeline.config import load_config
    from pipeline.core.checkpoint import CheckpointError, load_checkpoint
    from pipeline.core.codes import refit_codes
    from pipeline.procedural.dataset import make_dataset
    from pipeline.train.loop import Trainer

    repo = Path(__file__).resolve().parents[1]
    sets = ["procedural.intensities=[0.5, 1.0]", "procedural.n_identities=6"]
    cfg = load_config(repo / "configs" / "tiny.yaml", sets)
    root = tmp_path / "data"
    make_dataset(cfg.procedural, root, workers=1)
    stages = "train.stages=[{resolution: 4, steps: 2}]"
    run = load_config(
        repo / "configs" / "tiny.yaml",
        [*sets, f"data.root={root}", f"train.out_dir={tmp_path / 'run'}", stages, "train.judge_steps=2"],
    )
    final = Trainer(run).train()
    old = load_checkpoint(final)
    fresh = dict(old["codes"])
    # A checkpoint from before anchors: drop them, as such a checkpoint never had them.
    old["codes"] = {k: v for k, v in fresh.items() if k not in ("exp_levels", "exp_anchors", "exp_anchor_present")}
    torch.save(old, final)
    refit = refit_codes(final)
    assert refit["exp_levels"].tolist() == [0.5, 1.0]
    for k, v in fresh.items():
        torch.testing.assert_close(refit[k], v, msg=k)  # same encoder, same data: the codes training fitted
    assert load_checkpoint(final)["codes"]["exp_anchors"].shape == fresh["exp_anchors"].shape

    other = tmp_path / "other"
    make_dataset(load_config(repo / "configs" / "tiny.yaml", ["procedural.seed=5"]).procedural, other, workers=1)
    with pytest.raises(CheckpointError, match="not the data"):
        refit_codes(final, other)

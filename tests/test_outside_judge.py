"""The outside expression judge: another architecture than the training judges, trained once per dataset."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import REPO

import pipeline.quality.outside_judge as oj
from models import ExpressionClassifier, OutsideExpressionJudge
from pipeline.config import load_config


def test_outside_judge_shares_no_layer_type_with_the_training_judges() -> None:
    outside = {type(m) for m in OutsideExpressionJudge(7).modules()} - {OutsideExpressionJudge}
    trunk = {type(m) for m in ExpressionClassifier(7, input_size=64, channels=8).modules()}
    # Only generic building blocks in common (conv, BN, ReLU, linear, containers), no judge module.
    assert not {t for t in outside & trunk if t.__module__.startswith("models")}
    assert OutsideExpressionJudge(7)(torch.zeros(2, 3, 64, 64)).shape == (2, 7)


def test_outside_judge_is_trained_once_per_dataset_and_cached(tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_config(REPO / "configs" / "tiny.yaml", [f"data.root={tiny.parents[2] / 'data'}"])
    root, res = cfg.data.root, cfg.model.max_resolution
    calls = []
    real_train = oj.train_outside_judge
    monkeypatch.setattr(oj, "train_outside_judge", lambda *a, **k: calls.append(a[3]) or real_train(*a, **k))
    judge, stats = oj.load_outside_judge(root, res, 7, torch.device("cpu"), steps=3)
    assert calls == [3] and 0.0 <= stats["val_acc"] <= 1.0
    assert not judge.training and not any(p.requires_grad for p in judge.parameters())
    again, stats_again = oj.load_outside_judge(root, res, 7, torch.device("cpu"), steps=3)
    assert calls == [3] and stats_again == stats  # read from the cache, not trained again
    x = torch.rand(4, 3, res, res) * 2 - 1
    torch.testing.assert_close(judge(x), again(x))
    # Another recipe is another judge; a truncated cache file is retrained, not an error.
    oj.load_outside_judge(root, res, 7, torch.device("cpu"), steps=4)
    path = oj.outside_judge_path(root, res, 3)
    path.write_bytes(path.read_bytes()[:100])
    oj.load_outside_judge(root, res, 7, torch.device("cpu"), steps=3)
    assert calls == [3, 4, 3]


def test_outside_judge_batches_draw_every_class_equally_often() -> None:
    labels = torch.tensor([0] * 10 + [1] * 90)  # one class 9 times rarer, as neutral is in the procedural data
    weights = oj.class_balanced_weights(labels)
    drawn = labels[torch.multinomial(weights, 20_000, replacement=True, generator=torch.Generator().manual_seed(0))]
    assert abs(float((drawn == 0).float().mean()) - 0.5) < 0.02

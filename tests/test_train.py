"""Training: runs end to end, resumes exactly, fails loudly on bad input."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO

from pipeline.config import Config, ConfigError, load_config
from pipeline.core.checkpoint import CheckpointError, load_checkpoint
from pipeline.expressions import EXPRESSIONS
from pipeline.train.loop import Trainer, TrainingDiverged


def tiny_cfg(data: Path, out: Path, *extra: str) -> Config:
    return load_config(REPO / "configs" / "tiny.yaml", [f"data.root={data}", f"train.out_dir={out}", *extra])


class Stop(Exception):
    pass


def test_training_runs_and_resumes_exactly(tiny_data: Path, tmp_path: Path) -> None:
    ref = Trainer(tiny_cfg(tiny_data, tmp_path / "ref"))
    final = ref.train()
    ckpt = load_checkpoint(final)
    assert ckpt["codes"]["exp_centroids"].shape == (7, 8)
    assert ckpt["stage_idx"] == 3 and ckpt["global_step"] == 22
    cal = ckpt["calibration"]
    assert cal["split"] == "val" and cal["n_images"] > 0
    assert 0.0 <= cal["expression_threshold"] <= 1.0 and -1.0 <= cal["embedder_identity_threshold"] <= 1.0

    # Generation takes the calibrated thresholds unless told to use the config's fixed ones.
    from pipeline.generate import resolve_config

    gen_cfg, _ = resolve_config(None, final)
    assert gen_cfg.quality.expression_threshold == round(cal["expression_threshold"], 4)
    per_class = {k: round(v, 4) for k, v in cal["expression_thresholds"].items()}
    assert gen_cfg.quality.expression_thresholds == per_class and set(cal["expression_val_pass_pooled"]) <= set(
        EXPRESSIONS
    )
    fixed_cfg, _ = resolve_config(None, final, ["quality.thresholds=config"])
    assert fixed_cfg.quality.expression_threshold == 0.5
    explicit_cfg, _ = resolve_config(None, final, ["quality.expression_threshold=0.9"])
    assert explicit_cfg.quality.expression_threshold == 0.9  # an explicit value always wins

    # A release: float16 weights, no optimisers; --recalibrate re-derives the thresholds on its own weights.
    from pipeline.train.export import export_release

    rel = load_checkpoint(export_release(final, tmp_path / "release.pt", half=True, recalibrate=True))
    assert set(rel["nets"]) == {"encoder", "generator_ema", "classifier", "embedder"}
    assert {v.dtype for v in rel["nets"]["generator_ema"].values() if v.is_floating_point()} == {torch.float16}
    assert rel["calibration"]["n_images"] == cal["n_images"]
    assert abs(rel["calibration"]["expression_threshold"] - cal["expression_threshold"]) < 0.02

    # Kill a second run mid-way through the 8 px stage, between two checkpoints.
    def killer(info) -> None:
        if info.phase == "stage-8" and info.step == 7:
            raise Stop

    cfg = tiny_cfg(tiny_data, tmp_path / "run")
    with pytest.raises(Stop):
        Trainer(cfg, progress=killer).train()
    resumed = Trainer(cfg)
    # The last checkpoint of the 8 px stage was at its step 5: resume there, not from zero.
    assert (resumed.stage_idx, resumed.stage_step, resumed.global_step) == (1, 5, 11)
    assert resumed.alpha() == 1.0 and resumed.judges_done
    final2 = resumed.train()
    a = load_checkpoint(final)["nets"]["generator_ema"]
    b = load_checkpoint(final2)["nets"]["generator_ema"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=f"resumed run differs from uninterrupted run at {k}")


def test_stage_decay_scales_every_learning_rate_over_the_stage_end(tiny_data: Path, tmp_path: Path) -> None:
    seen: list[tuple[float, ...]] = []

    def record(info) -> None:
        if info.phase == "stage-4":
            seen.append(tuple(g["lr"] for opt in (t.opt_g, t.opt_d) for g in opt.param_groups))

    stages = "train.stages=[{resolution: 4, steps: 6, decay_steps: 4}, {resolution: 8, steps: 2, fade_steps: 1}]"
    cfg = tiny_cfg(tiny_data, tmp_path / "run", stages, "train.judge_steps=2", "train.lr=0.004", "train.disc_lr=0.001")
    t = Trainer(cfg, progress=record)
    base = (0.004, 0.004, cfg.train.encoder_lr, 0.001)  # generator, feedback, encoder | discriminator
    t.run_stage()
    scales = [1.0, 1.0, 1.0, 0.75, 0.5, 0.25]  # the last four of six steps fall linearly towards 0
    assert seen == [pytest.approx(tuple(b * s for b in base)) for s in scales]
    t.run_stage()  # the next stage starts again from the configured rates
    assert [g["lr"] for g in t.opt_g.param_groups] == pytest.approx(base[:3])
    with pytest.raises(ValueError, match=r"stages.1.decay_steps \(2\) overlaps the fade-in"):
        tiny_cfg(
            tiny_data,
            tmp_path,
            "train.stages=[{resolution: 4, steps: 6}, {resolution: 8, steps: 3, fade_steps: 2, decay_steps: 2}]",
        )


def test_resume_with_other_config_is_refused(tiny_data: Path, tmp_path: Path) -> None:
    cfg = tiny_cfg(tiny_data, tmp_path / "run", "train.stages=[{resolution: 4, steps: 5}]", "model.max_resolution=16")
    Trainer(cfg).train()
    other = tiny_cfg(tiny_data, tmp_path / "run", "train.stages=[{resolution: 4, steps: 5}]", "model.id_dim=32")
    with pytest.raises(CheckpointError, match=r"model\.id_dim"):
        Trainer(other)


def test_resume_reads_a_checkpoint_naming_retired_options(tiny_data: Path, tmp_path: Path) -> None:
    import json

    from pipeline.core.checkpoint import save_checkpoint

    cfg = tiny_cfg(tiny_data, tmp_path / "run", "train.judge_steps=2")
    first = Trainer(cfg)
    first.run_judges()
    path = first.ckpt_dir / "last.pt"
    ckpt = load_checkpoint(path)
    stored = json.loads(ckpt["config"])
    stored["train"]["balanced_classes"] = False  # an older run's config: the option existed, off
    stored["model"]["id_spatial_channels"] = 0
    ckpt["config"] = json.dumps(stored)
    save_checkpoint(path, {k: v for k, v in ckpt.items() if k != "format"})
    assert Trainer(cfg).judges_done  # resumed
    stored["train"]["balanced_classes"] = True  # on: the run cannot continue the same way
    ckpt["config"] = json.dumps(stored)
    save_checkpoint(path, {k: v for k, v in ckpt.items() if k != "format"})
    with pytest.raises(CheckpointError, match=r"train\.balanced_classes=True"):
        Trainer(cfg)


def test_corrupt_checkpoint_is_a_clear_error(tiny_data: Path, tmp_path: Path) -> None:
    cfg = tiny_cfg(tiny_data, tmp_path / "run", "train.stages=[{resolution: 4, steps: 5}]")
    final = Trainer(cfg).train()
    last = final.parent / "last.pt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupted or truncated"):
        Trainer(cfg)
    last.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=str(last)):
        load_checkpoint(last)


def test_nan_loss_stops_naming_step_and_loss_and_keeps_checkpoint(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tiny_cfg(tiny_data, tmp_path / "run")
    trainer = Trainer(cfg)
    trainer.run_judges()
    import pipeline.train.objective as objective

    monkeypatch.setattr(objective.L, "identity_loss", lambda *a: torch.tensor(float("nan")))
    with pytest.raises(TrainingDiverged, match=r"step 1 .*loss identity is nan"):
        trainer.run_stage()
    assert load_checkpoint(trainer.ckpt_dir / "last.pt")["judges_done"]


def test_dataset_with_too_few_classes_is_refused(tiny_data: Path, tmp_path: Path) -> None:
    import pandas as pd

    from manifests.labels import read_labels, write_labels

    root = tmp_path / "fewer"
    shutil.copytree(tiny_data, root)
    frame, meta = read_labels(root)
    frame = frame[frame["expression"].isin(["neutral", "happy", "sad"])]
    write_labels(root, pd.DataFrame(frame), meta)
    with pytest.raises(ValueError, match=r"3 expression classes but model\.num_classes is 7"):
        Trainer(tiny_cfg(root, tmp_path / "run"))


def test_ssim_loss_rewards_structure_not_just_average_colour() -> None:
    from pipeline.train.losses import ssim_loss

    g = torch.Generator().manual_seed(0)
    img = torch.rand(4, 3, 32, 32, generator=g) * 2 - 1
    blurred = torch.nn.functional.avg_pool2d(img, 3, stride=1, padding=1, count_include_pad=False)
    assert float(ssim_loss(img, img)) == pytest.approx(0.0, abs=1e-5)
    # A blur keeps every local mean (what L1 settles on) but loses structure: SSIM loss must see it.
    assert float(ssim_loss(blurred, img)) > 0.3


def test_frozen_judges_train_renders_not_themselves(tiny_data: Path, tmp_path: Path) -> None:
    import pandas as pd

    from manifests.labels import read_labels, write_labels

    trainer = Trainer(tiny_cfg(tiny_data, tmp_path / "run1"))
    trainer.run_judges()
    judges = ("classifier", "embedder")
    frozen = {(m, k): v.clone() for m in judges for k, v in trainer.nets.modules()[m].state_dict().items()}
    terms = trainer.train_step(16, 1.0)
    assert terms["swap_cls"] > 0 and math.isfinite(terms["identity"])
    for m in judges:
        for k, v in trainer.nets.modules()[m].state_dict().items():
            assert torch.equal(v, frozen[m, k]), (m, k)  # the judges are fixed yardsticks, never trained by the GAN
    # A photo set has no swap truths: the truth terms are skipped with a warning naming them.
    root = tmp_path / "photos"
    shutil.copytree(tiny_data, root)
    frame, meta = read_labels(root)
    write_labels(root, pd.DataFrame(frame).assign(source="folder"), meta)
    with pytest.warns(UserWarning, match=r"train\.loss\.swap_truth cannot apply"):  # tiny.yaml sets it
        photo = Trainer(tiny_cfg(root, tmp_path / "run2"))
    photo.run_judges()
    terms = photo.train_step(16, 1.0)
    assert "swap_truth" not in terms and math.isfinite(terms["loss_g"])


def test_channels_last_is_a_speed_setting_only(tiny_data: Path, tmp_path: Path) -> None:
    steps = []
    for cl in ("true", "false"):
        trainer = Trainer(tiny_cfg(tiny_data, tmp_path / cl, f"train.channels_last={cl}", "train.judge_steps=2"))
        trainer.run_judges()
        weight = next(p for p in trainer.nets.discriminator.parameters() if p.dim() == 4 and p.shape[-1] > 1)
        assert weight.is_contiguous(memory_format=torch.channels_last) == (cl == "true")
        steps.append(trainer.train_step(16, 1.0))
    for k in ("recon", "swap_truth", "latent", "g_adv"):  # same maths, another memory layout
        assert steps[0][k] == pytest.approx(steps[1][k], rel=1e-3), k
    trainer.save()
    # A run started with one layout resumes with the other (not a config mismatch).
    again = Trainer(tiny_cfg(tiny_data, tmp_path / "false", "train.channels_last=true", "train.judge_steps=2"))
    theirs = trainer.nets.generator.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in again.nets.generator.state_dict().items())


def test_expression_transfer_places_renders_between_source_and_truth() -> None:
    from pipeline.evaluate import expression_transfer

    g = torch.Generator().manual_seed(0)
    src, truth = torch.rand(3, 3, 8, 8, generator=g), torch.rand(3, 3, 8, 8, generator=g)
    assert expression_transfer(truth, src, truth) == pytest.approx([1.0] * 3)
    assert expression_transfer(src, src, truth) == pytest.approx([-1.0] * 3)
    assert expression_transfer((src + truth) / 2, src, truth) == pytest.approx([0.0] * 3, abs=1e-6)
    assert expression_transfer(0.25 * src + 0.75 * truth, src, truth) == pytest.approx([0.5] * 3, abs=1e-5)


def test_generator_and_discriminator_optimisers_follow_their_own_settings(tiny_data: Path, tmp_path: Path) -> None:
    t = Trainer(
        tiny_cfg(tiny_data, tmp_path / "run", "train.gen_betas=[0.9, 0.99]", "train.disc_lr=0.0005", "train.lr=0.004")
    )
    assert all(g["betas"] == (0.9, 0.99) for g in t.opt_g.param_groups)
    assert t.opt_g.param_groups[0]["lr"] == 0.004
    assert t.opt_d.param_groups[0]["betas"] == (0.0, 0.99) and t.opt_d.param_groups[0]["lr"] == 0.0005
    same = Trainer(tiny_cfg(tiny_data, tmp_path / "run2"))
    assert same.opt_g.param_groups[0]["betas"] == same.opt_d.param_groups[0]["betas"]  # gen_betas unset


def test_evaluate_scores_swaps_against_truth_with_the_copy_source_reference(tiny_data: Path, tmp_path: Path) -> None:
    from pipeline.evaluate import evaluate_checkpoint

    final = Trainer(tiny_cfg(tiny_data, tmp_path / "run")).train()
    result = evaluate_checkpoint(final, out_dir=tmp_path / "eval")
    m = result["metrics"]
    assert m["n_swaps"] > 0 and m["n_swaps"] % 7 == 0  # every source x every target expression
    for key in ("expr_acc", "id_top1", "ssim_truth", "ssim_truth_copy_source", "recon_ssim"):
        assert -1.0 <= m[key] <= 1.0, key
    # The unchanged source matches its own session's truths far better than an untrained render does.
    assert m["ssim_truth_copy_source"] > m["ssim_truth"]
    assert (tmp_path / "eval" / "eval.json").is_file() and Path(result["grid"]).is_file()
    # Fidelity over the pixels the expression changes and the rest, for composite, plain RGB and copy.
    for suffix in ("", "_raw", "_copy_source"):
        for key in ("l1_changed", "l1_unchanged", "ssim_changed", "ssim_unchanged", "psnr_changed"):
            assert math.isfinite(m[f"{key}{suffix}"]), key + suffix
    assert m["l1_unchanged_copy_source"] < m["l1_changed_copy_source"]  # the copy is right where nothing changes
    assert 0.0 < m["changed_share"] < 1.0
    # Leakage: accuracy by source x target expression, summarised, pictured and reported.
    leak = result["leak_table"]
    assert len(leak["accuracy"]) == 7 and all(len(row) == 7 for row in leak["accuracy"])
    assert sum(map(sum, leak["count"])) == m["n_swaps"]
    assert 0.0 <= m["leak_spread_mean"] <= m["leak_spread_max"] <= 1.0
    assert Path(leak["heatmap"]).is_file()
    report = Path(result["report"]).read_text()
    assert "## Leakage" in report and "## Fidelity where the expression changes" in report
    # Novel identities (no truth) get judge and identity figures beside real photos and real codes;
    # they need two faces to compare (the tiny test split has one, its validation split two).
    assert "expr_acc_novel" not in m and "## Novel identities" not in report
    val = evaluate_checkpoint(final, out_dir=tmp_path / "eval-val", split="val")
    for kind in ("photos", "codes", "novel"):
        for key in ("expr_acc", "id_same", "id_other", "id_top1"):
            assert -1.0 <= val["metrics"][f"{key}_{kind}"] <= 1.0, f"{key}_{kind}"
    assert val["metrics"]["id_same_photos"] > val["metrics"]["id_other_photos"]  # real faces told apart
    assert "## Novel identities" in Path(val["report"]).read_text()


def test_fitted_identity_codes_render_novel_identities(tiny_data: Path, tmp_path: Path) -> None:
    from pipeline.core.codes import expression_target, sample_identity
    from pipeline.core.networks import build_networks

    cfg = tiny_cfg(tiny_data, tmp_path / "run")
    ckpt = load_checkpoint(Trainer(cfg, tmp_path / "full").train())
    width = cfg.model.id_dim
    codes = ckpt["codes"]
    assert codes["id_mean"].shape == (width,) and codes["id_chol"].shape == (width, width)
    # Novel identities are drawn from the fitted Gaussian of identity codes and render.
    nets = build_networks(cfg, 1)
    nets.generator_ema.load_state_dict(ckpt["nets"]["generator_ema"])
    g = torch.Generator().manual_seed(0)
    w_id = torch.stack([sample_identity(codes, g) for _ in range(3)])
    w_exp = expression_target(codes, torch.tensor([0, 1, 2]), torch.ones(3))
    img = nets.generator_ema(w_id, w_exp, 16)
    assert img.shape == (3, 3, 16, 16) and torch.isfinite(img).all()
    assert (img[0] - img[1]).abs().mean() > 1e-3  # different identities, different images


def test_edit_mask_trains_composited_swaps_and_evaluate_scores_both_renders(tiny_data: Path, tmp_path: Path) -> None:
    from pipeline.evaluate import evaluate_checkpoint

    cfg = tiny_cfg(tiny_data, tmp_path / "run", "model.edit_mask=true")
    trainer = Trainer(cfg)
    trainer.run_judges()
    trainer.stage_idx = 2
    m = trainer.train_step(16, 1.0)
    # Swaps are composited over their sources; the raw RGB keeps its own truth terms; the mask is charged.
    assert {"swap_truth", "swap_truth_raw", "swap_ssim_raw", "mask"} <= set(m)
    assert 0.0 < m["mask"] < 1.0
    final = Trainer(cfg, tmp_path / "full").train()
    learned = ["generate.composite=mask"]
    metrics = evaluate_checkpoint(final, out_dir=tmp_path / "eval", overrides=learned)["metrics"]
    for key in ("expr_acc_raw", "ssim_truth_raw", "mask_open_changed", "mask_open_kept"):
        assert 0.0 <= metrics[key] <= 1.0, key
    # Drawn over the source, the swaps keep the source's pixels where the mask keeps them: they sit
    # closer to the truth than the untrained raw RGB does.
    assert metrics["ssim_truth"] > metrics["ssim_truth_raw"]
    plain_ckpt = Trainer(tiny_cfg(tiny_data, tmp_path / "plain")).train()
    plain = evaluate_checkpoint(plain_ckpt, out_dir=tmp_path / "e2", overrides=learned)["metrics"]
    assert "expr_acc_raw" not in plain  # no learned mask: swaps are the plain RGB
    # The default difference composite draws any checkpoint's swaps over their source.
    diff = evaluate_checkpoint(plain_ckpt, out_dir=tmp_path / "e3")["metrics"]
    assert diff["expr_acc_raw"] == plain["expr_acc"]  # the same plain RGB, scored beside the composite
    # (22 steps: the renders for any two expressions still differ everywhere, so the mask is open.)
    assert 0.0 <= diff["mask_open_kept"] <= diff["mask_open_changed"] <= 1.0


def test_precision_setting_picks_bf16_only_where_the_hardware_has_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.core import networks

    cpu = torch.device("cpu")
    assert networks.autocast_dtype("fp32", cpu) is None
    monkeypatch.setattr(networks, "native_bf16", lambda device: True)
    assert networks.autocast_dtype("auto", cpu) is torch.bfloat16
    assert networks.autocast_dtype("bf16", cpu) is torch.bfloat16
    monkeypatch.setattr(networks, "native_bf16", lambda device: False)  # emulated bf16 is slower: fp32
    assert networks.autocast_dtype("auto", cpu) is None
    with pytest.raises(ValueError, match=r"train\.precision=bf16.*no native bfloat16"):
        networks.autocast_dtype("bf16", cpu)


def test_ssim_loss_is_computed_in_float32_under_bf16_autocast() -> None:
    from pipeline.train.losses import ssim_loss

    gen = torch.Generator().manual_seed(0)
    real = torch.rand(4, 3, 32, 32, generator=gen) * 2 - 1
    fake = (real + 0.05 * torch.randn(4, 3, 32, 32, generator=gen)).clamp(-1, 1)
    want = float(ssim_loss(fake, real))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = ssim_loss(fake.bfloat16(), real)  # renders come out of bf16 convolutions
    assert got.dtype == torch.float32
    # Only the inputs' rounding to bf16 remains, not bf16 arithmetic in the variances.
    assert float(got) == pytest.approx(want, abs=5e-3)


@pytest.mark.skipif(not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="CPU without native bfloat16")
def test_bf16_training_step_runs_convolutions_in_bf16_and_keeps_float32_state(tiny_data: Path, tmp_path: Path) -> None:
    trainer = Trainer(tiny_cfg(tiny_data, tmp_path / "bf16", "train.precision=bf16", "train.judge_steps=2"))
    trainer.run_judges()
    seen = []
    hook = trainer.nets.generator.register_forward_hook(
        lambda m, i, out: seen.append((out[0] if isinstance(out, tuple) else out).dtype)
    )
    before = {k: v.clone() for k, v in trainer.nets.generator.state_dict().items()}
    metrics = trainer.train_step(16, 1.0)
    hook.remove()
    assert torch.bfloat16 in seen  # the renders came out of bf16 convolutions
    assert all(math.isfinite(v) for v in metrics.values())
    after = trainer.nets.generator.state_dict()
    assert all(v.dtype == torch.float32 for v in after.values() if v.is_floating_point())
    assert any(not torch.equal(before[k], v) for k, v in after.items())  # and it learnt
    assert all(s["exp_avg"].dtype == torch.float32 for s in trainer.opt_g.state.values())


def test_balanced_targets_draw_classes_equally_and_encode_the_donors(tiny_data: Path, tmp_path: Path) -> None:
    trainer = Trainer(tiny_cfg(tiny_data, tmp_path / "bt", "train.balanced_targets=true", "train.judge_steps=2"))
    # Skew the labels as a photo set might be (half the rows one class) to see the draw undo it.
    labels = trainer.data.labels
    skewed = torch.where(torch.arange(len(labels)) % 2 == 0, torch.ones_like(labels), labels)
    trainer.__dict__.pop("_row_weights", None)
    trainer.data.labels = skewed
    share = torch.bincount(skewed[trainer.sample_targets(7000)], minlength=7).double() / 7000
    trainer.data.labels = labels
    trainer.__dict__.pop("_row_weights", None)
    assert torch.allclose(share, torch.full((7,), 1 / 7, dtype=torch.float64), atol=0.02)

    trainer.run_judges()
    batches = []
    hook = trainer.nets.encoder.register_forward_hook(lambda m, i, out: batches.append(i[0].shape[0]))
    metrics = trainer.train_step(16, 1.0)
    hook.remove()
    b = trainer.stage.batch_size or trainer.cfg.train.batch_size
    assert batches[0] == 2 * b  # sources and their own donors, in one pass
    assert all(math.isfinite(v) for v in metrics.values())


def test_objective_phases_return_named_terms_that_make_their_totals(tiny_data: Path, tmp_path: Path) -> None:
    trainer = Trainer(tiny_cfg(tiny_data, tmp_path / "obj", "train.judge_steps=2"))
    trainer.run_judges()
    obj, w = trainer.objective, trainer.cfg.train.loss
    batch = trainer.sample_batch(8, 16, 1.0)
    assert batch.truth is not None and batch.valid.any()  # procedural data: the swaps' true images
    r = obj.render(batch, 16, 1.0)
    loss_d, d = obj.discriminator_phase(batch, r, 16, 1.0, with_r1=True)
    assert set(d) == {"d_adv", "r1"}
    assert float(loss_d) == pytest.approx(float(d["d_adv"] + 0.5 * w.r1 * obj.R1_EVERY * d["r1"]), rel=1e-6)
    loss_g, g = obj.generator_phase(batch, r, 16, 1.0)
    expected = (
        w.adv * (g["g_adv"] + g["g_cls"])
        + w.recon * g["recon"]
        + w.swap_cls * g["swap_cls"]
        + w.identity * g["identity"]
        + w.latent * g["latent"]
        + w.cycle * g["cycle"]
        + w.ssim * (g["recon_ssim"] + g["swap_ssim"])
        + w.swap_truth * g["swap_truth"]
    )
    assert float(loss_g) == pytest.approx(float(expected), rel=1e-5)
    assert 0.0 <= float(g["swap_acc"]) <= 1.0  # a readout, not a loss term


def test_finished_training_stores_a_judge_panel_that_gates_and_export_can_grow_it(
    tiny_data: Path, tmp_path: Path
) -> None:
    from models import JudgePanel
    from pipeline.judges import load_eval_judges, load_gate_judges
    from pipeline.train.export import export_release

    cfg = tiny_cfg(tiny_data, tmp_path / "run", "train.judge_panel=2")
    final = Trainer(cfg).train()
    ckpt = load_checkpoint(final)
    assert len(ckpt["eval_judges"]["panel"]) == 1
    gate, _ = load_gate_judges(cfg, ckpt, torch.device("cpu"))
    independent, _ = load_eval_judges(cfg, ckpt, torch.device("cpu"))
    assert isinstance(gate, JudgePanel) and len(gate.members) == 2
    first = gate.members[0].state_dict()
    assert all(torch.equal(first[k], v) for k, v in independent.state_dict().items())  # evaluation's judge leads
    assert not torch.equal(gate.members[1].state_dict()["head.1.weight"], first["head.1.weight"])  # own seed

    grown = load_checkpoint(export_release(final, tmp_path / "rel.pt", judge_panel=3))
    members = grown["eval_judges"]["panel"]
    assert len(members) == 2 and torch.equal(
        members[0]["head.1.weight"], ckpt["eval_judges"]["panel"][0]["head.1.weight"]
    )
    assert "expression_thresholds" in grown["calibration"]  # recalibrated on the grown panel
    # Gate settings can be changed at export; the thresholds follow, the networks cannot be changed.
    strict = load_checkpoint(export_release(final, tmp_path / "k.pt", overrides=["quality.expression_keep=0.9"]))
    stored = strict["config"] if isinstance(strict["config"], dict) else json.loads(strict["config"])
    before = ckpt["config"] if isinstance(ckpt["config"], dict) else json.loads(ckpt["config"])
    assert stored["quality"]["expression_keep"] == 0.9 and strict["calibration"]["expression_keep"] == 0.9
    assert {k: v for k, v in stored["quality"].items() if k != "expression_keep"} == {
        k: v for k, v in before["quality"].items() if k != "expression_keep"
    } and {k: v for k, v in stored.items() if k != "quality"} == {k: v for k, v in before.items() if k != "quality"}
    default = load_checkpoint(export_release(final, tmp_path / "d.pt", recalibrate=True))  # same panel, keep 1.0
    assert strict["calibration"]["expression_threshold"] >= default["calibration"]["expression_threshold"]
    with pytest.raises(ConfigError, match="quality"):
        export_release(final, tmp_path / "m.pt", overrides=["model.gen_channels=8"])
    alone = load_checkpoint(export_release(final, tmp_path / "one.pt", judge_panel=1))
    assert not alone["eval_judges"].get("panel")
    assert type(load_gate_judges(cfg, alone, torch.device("cpu"))[0]).__name__ == "ExpressionClassifier"


def test_checkpoint_naming_the_retired_skip_features_renders_unchanged_or_is_refused(
    tiny_data: Path, tmp_path: Path
) -> None:
    from pipeline.core.checkpoint import save_checkpoint
    from pipeline.core.trained import load_trained

    stages = "train.stages=[{resolution: 4, steps: 3}, {resolution: 8, steps: 3, fade_steps: 1}]"
    cfg = tiny_cfg(tiny_data, tmp_path / "run", "model.max_resolution=8", stages, "train.judge_steps=3")
    trainer = Trainer(cfg)
    final = trainer.train()
    ckpt = load_checkpoint(final)
    stored = json.loads(ckpt["config"])

    def with_skip(value: bool) -> Path:
        stored["model"]["skip_features"] = value  # a checkpoint saved while the option existed
        ckpt["config"] = json.dumps(stored)
        return save_checkpoint(tmp_path / f"skip-{value}.pt", {k: v for k, v in ckpt.items() if k != "format"})

    _, nets, _ = load_trained(with_skip(False))  # off: the generator it always was
    w_id, w_exp = torch.randn(3, cfg.model.id_dim), torch.randn(3, cfg.model.exp_dim)
    with torch.no_grad():
        torch.testing.assert_close(nets.generator_ema(w_id, w_exp, 8), trainer.nets.generator_ema(w_id, w_exp, 8))
    with pytest.raises(CheckpointError, match=r"model\.skip_features=True .*no longer supported.*e193d4e"):
        load_trained(with_skip(True))
    with pytest.raises(ConfigError, match=r"model\.skip_features: .*docs/experiments/skip_fed_generator\.md"):
        tiny_cfg(tiny_data, tmp_path, "model.skip_features=true")


PHOTO_SKIPS = ("model.edit_mask=true", "model.photo_skips=true", "generate.composite=mask")


def test_changed_region_weight_puts_the_swap_truth_loss_where_the_expression_changes() -> None:
    from pipeline.quality.regions import changed_region
    from pipeline.train.losses import weighted_l1

    source = torch.zeros(1, 3, 16, 16)
    truth = source.clone()
    truth[..., 10:12, 6:10] = 0.8  # the mouth opens
    weight = 1.0 + 10.0 * changed_region(truth, source)
    off_mouth, on_mouth = source.clone(), source.clone()
    off_mouth[..., 0:2, 0:4] = 0.8  # the same error, on a part the expression leaves alone ...
    on_mouth[..., 10:12, 6:10] = 0.0  # ... and on the mouth (the copied source)
    assert float(weighted_l1(on_mouth, truth, weight)) > 5 * float(weighted_l1(off_mouth, source, weight))
    torch.testing.assert_close(weighted_l1(on_mouth, truth, torch.ones_like(weight)), F.l1_loss(on_mouth, truth))


def test_changed_region_weight_puts_the_ssim_loss_where_the_expression_changes() -> None:
    from pipeline.quality.regions import changed_region
    from pipeline.train.losses import ssim_loss

    torch.manual_seed(0)
    source = torch.rand(1, 3, 32, 32) * 2 - 1
    truth = source.clone()
    truth[..., 20:26, 10:22] = -truth[..., 20:26, 10:22]  # the mouth changes
    weight = 1.0 + 10.0 * changed_region(truth, source)
    blur_mouth, blur_hair = truth.clone(), truth.clone()
    blur_mouth[..., 20:26, 10:22] = 0.0  # structure lost on the mouth ...
    blur_hair[..., 2:8, 10:22] = 0.0  # ... or as much of it where the expression leaves the face alone
    assert float(ssim_loss(blur_mouth, truth, weight)) > 3 * float(ssim_loss(blur_hair, truth, weight))
    plain = float(ssim_loss(blur_mouth, truth))
    assert abs(float(ssim_loss(blur_mouth, truth, torch.ones_like(weight))) - plain) < 1e-5
    assert abs(plain - float(ssim_loss(blur_hair, truth))) < 0.05  # unweighted, the two errors cost alike


def test_photo_skips_recipe_trains_without_zero_weight_terms_and_evaluates(tiny_data: Path, tmp_path: Path) -> None:
    from pipeline.evaluate import evaluate_checkpoint

    zero = ("train.loss.adv=0", "train.loss.swap_cls=0", "train.loss.cycle=0", "train.loss.identity=0")
    cfg = tiny_cfg(
        tiny_data,
        tmp_path / "run",
        *PHOTO_SKIPS,
        "train.loss.changed_weight=10",
        "train.loss.ssim_changed_weight=10",
        "train.loss.code_swap_truth=5",
        *zero,
    )
    trainer = Trainer(cfg)
    trainer.run_judges()
    assert trainer.nets.generator.reads_photo
    disc = {k: v.clone() for k, v in trainer.nets.discriminator.state_dict().items()}
    trainer.stage_idx = 2
    m = trainer.train_step(16, 1.0)
    # A term weighted 0 is not computed, and without an adversary the discriminator never moves.
    assert not {"g_adv", "d_adv", "swap_cls", "cycle", "identity"} & set(m)
    assert {
        "swap_truth",
        "swap_truth_raw",
        "swap_truth_codes",
        "swap_ssim",
        "swap_ssim_codes",
        "latent",
        "mask",
    } <= set(m)
    assert all(torch.equal(v, disc[k]) for k, v in trainer.nets.discriminator.state_dict().items())
    final = Trainer(cfg, tmp_path / "full").train()
    metrics = evaluate_checkpoint(final, out_dir=tmp_path / "eval")["metrics"]
    for key in ("expr_acc", "expr_acc_outside", "expr_acc_outside_happy", "outside_judge_acc_real", "ssim_changed"):
        assert 0.0 <= metrics[key] <= 1.0, key
    # Beside each judge's reading of the swaps, its reading of their true photos: what a render identical to its truth scores.
    for judge in ("expr_acc", "expr_acc_outside"):
        per_class = [metrics[f"truth_{judge}_{name}"] for name in EXPRESSIONS]
        assert all(0.0 <= v <= 1.0 for v in per_class), judge
        assert abs(sum(per_class) / 7 - metrics[f"truth_{judge}"]) < 1e-6  # every class has as many truths


@pytest.mark.parametrize(
    "design", [(), ("model.lean_generator=true", "model.code_norm=true", "train.feedback_reads=codes")], ids=["C", "I"]
)
def test_photo_skips_train_on_photo_data_without_swap_truth(
    tiny_data: Path, tmp_path: Path, design: tuple[str, ...]
) -> None:
    import pandas as pd

    from manifests.labels import read_labels, write_labels

    root = tmp_path / "photos"
    shutil.copytree(tiny_data, root)
    frame, meta = read_labels(root)
    write_labels(root, pd.DataFrame(frame).assign(source="folder"), meta)
    with pytest.warns(UserWarning, match=r"train\.loss\.swap_truth cannot apply"):
        trainer = Trainer(tiny_cfg(root, tmp_path / "run", *PHOTO_SKIPS, *design))
    trainer.run_judges()
    trainer.stage_idx = 2
    m = trainer.train_step(16, 1.0)
    # No truth: the cycle through the photo path, feedback recovery, the judge and the adversary carry it.
    assert "swap_truth" not in m
    assert all(math.isfinite(m[k]) for k in ("cycle", "latent", "swap_cls", "g_adv", "d_adv", "loss_g"))
    gen = trainer.nets.generator
    before = [p.detach().clone() for p in gen.photo_path.parameters()]
    trainer.train_step(16, 1.0)
    assert any(not torch.equal(a, p) for a, p in zip(before, gen.photo_path.parameters(), strict=True))


def test_expression_probe_holds_the_code_to_the_label(tiny_data: Path, tmp_path: Path) -> None:
    cfg = tiny_cfg(tiny_data, tmp_path / "run", *PHOTO_SKIPS, "model.exp_code_probe=true", "train.loss.exp_code=5")
    trainer = Trainer(cfg)
    trainer.run_judges()
    trainer.stage_idx = 2
    probe = trainer.nets.encoder.exp_probe
    before = probe.weight.detach().clone()
    first = trainer.train_step(16, 1.0)["exp_code"]
    assert first == pytest.approx(math.log(7), rel=0.3)  # an untrained probe is near chance
    assert not torch.equal(before, probe.weight)  # ... and it learns, with the code it reads
    for _ in range(15):
        last = trainer.train_step(16, 1.0)["exp_code"]
    assert last < first
    plain = Trainer(tiny_cfg(tiny_data, tmp_path / "plain"))
    assert plain.nets.encoder.exp_probe is None


def test_recon_share_and_raw_truth_spend_the_step_on_the_swaps(tiny_data: Path, tmp_path: Path) -> None:
    zero = ("train.loss.adv=0", "train.loss.swap_cls=0", "train.loss.cycle=0", "train.loss.identity=0")
    extra = (*PHOTO_SKIPS, *zero, "train.loss.swap_truth=10", "train.loss.ssim=1", "train.judge_steps=2")
    half = Trainer(tiny_cfg(tiny_data, tmp_path / "half", *extra, "train.recon_share=0.5", "train.loss.raw_truth=0"))
    half.run_judges()
    obj, w = half.objective, half.cfg.train.loss
    batch = half.sample_batch(8, 16, 1.0)
    r = obj.render(batch, 16, 1.0)
    assert len(r.rec) == 4 and len(r.swap) == 8  # half the rows reconstructed, every row swapped
    loss, g = obj.generator_phase(batch, r, 16, 1.0)
    assert "swap_truth_raw" not in g and "swap_ssim_raw" not in g  # only the composite meets the truth
    expected = (
        w.recon * g["recon"]
        + w.latent * g["latent"]
        + w.ssim * (g["recon_ssim"] + g["swap_ssim"])
        + w.swap_truth * g["swap_truth"]
        + w.mask * g["mask"]
    )
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    torch.testing.assert_close(g["recon"], F.l1_loss(r.rec, batch.x[:4]))
    # A share of the truth terms on the plain RGB enters the total at that share.
    some = Trainer(tiny_cfg(tiny_data, tmp_path / "some", *extra, "train.loss.raw_truth=0.25"))
    some.run_judges()
    r = some.objective.render(batch, 16, 1.0)
    assert len(r.rec) == 8
    loss, g = some.objective.generator_phase(batch, r, 16, 1.0)
    raw = 0.25 * (w.swap_truth * g["swap_truth_raw"] + w.ssim * g["swap_ssim_raw"])
    rest = w.recon * g["recon"] + w.latent * g["latent"] + w.ssim * (g["recon_ssim"] + g["swap_ssim"])
    assert float(loss) == pytest.approx(
        float(rest + w.swap_truth * g["swap_truth"] + w.mask * g["mask"] + raw), rel=1e-5
    )
    # Without the reconstruction term its SSIM goes too: the step is spent on the swaps alone.
    none = Trainer(tiny_cfg(tiny_data, tmp_path / "none", *extra, "train.loss.recon=0", "train.loss.raw_truth=0"))
    none.run_judges()
    r = none.objective.render(batch, 16, 1.0)
    loss, g = none.objective.generator_phase(batch, r, 16, 1.0)
    assert "recon_ssim" not in g
    expected = w.latent * g["latent"] + w.ssim * g["swap_ssim"] + w.swap_truth * g["swap_truth"] + w.mask * g["mask"]
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)


def test_feedback_reading_codes_only_leaves_the_photo_swaps_to_their_truth(tiny_data: Path, tmp_path: Path) -> None:
    zero = ("train.loss.adv=0", "train.loss.swap_cls=0", "train.loss.cycle=0", "train.loss.identity=0")
    extra = (*PHOTO_SKIPS, *zero, "train.loss.swap_truth=10", "train.loss.code_swap_truth=10", "train.judge_steps=2")
    latents = {}
    for reads in ("all", "codes"):
        trainer = Trainer(tiny_cfg(tiny_data, tmp_path / reads, *extra, f"train.feedback_reads={reads}"))
        trainer.run_judges()
        obj = trainer.objective
        batch = trainer.sample_batch(8, 16, 1.0)
        r = obj.render(batch, 16, 1.0)
        assert r.swap_codes is not None
        _, terms = obj.generator_phase(batch, r, 16, 1.0)
        fb_sw = trainer.nets.feedback(r.swap) if reads == "all" else None
        latent = obj.latent_recovery(r, fb_sw)
        torch.testing.assert_close(latent, terms["latent"])
        latents[reads] = torch.autograd.grad(latent, [r.swap, r.swap_codes], allow_unused=True)
    on_swap, on_codes = latents["all"]
    assert on_swap is not None and on_swap.abs().sum() > 0 and on_codes is None  # the paper: every swap
    on_swap, on_codes = latents["codes"]
    # Reading only what the codes alone drew, its gradient never reaches the swaps over the photo.
    assert on_swap is None and on_codes is not None and on_codes.abs().sum() > 0


@pytest.mark.slow
def test_training_flow_runs_the_same_steps_with_one_trainer(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prefect_api: str
) -> None:
    import flows.train as train_flows

    built = []

    class Counted(Trainer):
        def __init__(self, *a: object, **k: object) -> None:
            built.append(1)
            super().__init__(*a, **k)

    monkeypatch.setattr(train_flows, "Trainer", Counted)
    sets = [f"data.root={tiny.parents[2] / 'data'}", f"train.out_dir={tmp_path / 'flow'}"]  # the tiny run's data
    result = train_flows.train_flow(str(REPO / "configs" / "tiny.yaml"), sets, evaluate=False)
    assert built == [1]  # judges, every stage and the report share one trainer
    flow_ckpt, plain_ckpt = load_checkpoint(Path(result["checkpoint"])), load_checkpoint(tiny)
    assert flow_ckpt["global_step"] == plain_ckpt["global_step"] == 22
    for k, v in plain_ckpt["nets"]["generator_ema"].items():  # the same steps give the same weights
        assert torch.equal(flow_ckpt["nets"]["generator_ema"][k], v), k
    assert [s["resolution"] for s in result["stages"]] == [4, 8, 16]
    assert Path(result["report"]).is_file() and (tmp_path / "flow" / "samples").is_dir()

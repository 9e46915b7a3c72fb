"""Dataset generation: plan, resumable shards, gates, staging/publish, the Prefect flow.

One tiny procedural dataset and one tiny checkpoint per module (configs/tiny.yaml, a few seconds).
The tiny GAN's renders fail the real gates, which is what the rejection tests want; tests that need
a published dataset relax the thresholds and stand in an ideal expression classifier.
"""

from __future__ import annotations

import errno
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO
from fast_settings import FAST_GENERATE, FAST_USEFULNESS, LENIENT_GATES

import pipeline.generate.context as context_mod
import pipeline.generate.rendering as rendering_mod
import pipeline.generate.shards as shards_mod
from manifests.reader import read_manifest
from manifests.writer import list_shards, shard_path
from pipeline.audit import audit_dataset
from pipeline.config import Config, ConfigError, config_to_dict, load_config
from pipeline.core.checkpoint import CheckpointError
from pipeline.core.trained import load_trained
from pipeline.generate import (
    REJECTED_MARKER,
    STAGING_DIR,
    PlanError,
    ShardError,
    generate_dataset,
    load_plan,
    resolve_config,
)
from pipeline.generate.planning import make_plan
from pipeline.train.grids import to_uint8


@pytest.fixture
def fast(fid_weights: Path) -> list[str]:
    return [*FAST_GENERATE, f"quality.fid_weights={fid_weights}", *FAST_USEFULNESS]


def cfg_for(ckpt: Path, *sets: str) -> Config:
    cfg, _ = resolve_config(None, ckpt, list(sets))
    return cfg


def manifest_of(root: Path) -> pd.DataFrame:
    df = read_manifest(root).drop(columns=["run_id"])
    return df.sort_values("sample_id").reset_index(drop=True)


# --------------------------------------------------------------------------- plan


def test_plan_is_deterministic_and_balanced(tiny: Path) -> None:
    sets = [
        "generate.identity_sources=[real, novel]",
        "generate.n_novel=3",
        "generate.intensities=[0.5, 1.0]",
        "generate.repeats=2",
    ]
    cfg = cfg_for(tiny, *sets)
    a, b = make_plan(cfg, tiny), make_plan(cfg, tiny)
    assert a.key == b.key
    assert [i.sample_id for i in a.items] == [i.sample_id for i in b.items]
    np.testing.assert_array_equal(a.codes, b.codes)
    n_ids = 6 + 3  # train identities of the tiny data + novel
    assert len(a.identities) == n_ids
    counts = a.class_counts()
    assert set(counts.values()) == {n_ids * 2 * 2}, counts
    assert len({i.sample_id for i in a.items}) == len(a.items)
    assert len({(i.noise_seed, i.nuisance_seed) for i in a.items}) == len(a.items)
    assert {i.identity_source for i in a.items} == {"real:train", "novel"}
    # A different seed changes novel identities and seeds, hence the ids.
    c = make_plan(cfg_for(tiny, *sets, "generate.seed=1"), tiny)
    assert not {i.sample_id for i in c.items} & {i.sample_id for i in a.items}


def test_unknown_expression_and_zero_identities_are_clear_errors(tiny: Path, tmp_path: Path) -> None:
    from pipeline.generate.plan import check_expressions

    with pytest.raises(ConfigError, match=r"generate\.expressions.*unknown expression.*'joy'"):
        cfg_for(tiny, "generate.expressions=[happy, joy]")
    with pytest.raises(PlanError, match="unknown expression"):
        check_expressions(["happy", "joy"])
    empty = tmp_path / "ids.txt"
    empty.write_text("# nobody\n")
    cfg = cfg_for(tiny, "generate.identity_sources=[file]", f"generate.identity_file={empty}")
    with pytest.raises(PlanError, match="zero identities"):
        make_plan(cfg, tiny)
    (tmp_path / "bad.txt").write_text("id00001\nnobody\n")
    cfg = cfg_for(tiny, "generate.identity_sources=[file]", f"generate.identity_file={tmp_path / 'bad.txt'}")
    with pytest.raises(PlanError, match="nobody"):
        make_plan(cfg, tiny)
    with pytest.raises(PlanError, match="identical images"):
        make_plan(cfg_for(tiny, "generate.repeats=2", "generate.exp_jitter=0"), tiny)


def test_photo_data_gets_a_facenet_threshold_calibrated_on_its_photos(
    tiny: Path, tmp_path: Path, facenet_weights: Path
) -> None:
    import shutil

    from manifests.labels import read_labels, write_labels

    root = tmp_path / "photos"  # the tiny faces relabelled as photos: judged by FaceNet, not the embedder
    shutil.copytree(tiny.parents[2] / "data", root)
    frame, meta = read_labels(root)
    write_labels(root, pd.DataFrame(frame).assign(source="folder"), meta)
    sets = [f"data.root={root}", "quality.face_detection=false", f"quality.facenet_weights={facenet_weights}"]
    cfg, cal = resolve_config(None, tiny, sets)
    assert cal["facenet"]["n_identities"] == 8 and cal["facenet"]["n_faces"] == len(frame), cal
    assert cfg.quality.identity_threshold == round(cal["facenet"]["identity_threshold"], 4) != 0.5
    # The tiny run has one validation identity, too few for the judges' own calibration: recorded too.
    assert "different pairs, got 7 and 0" in cal["checkpoint"]["error"]
    # A resolved config handed on as a dict keeps its values when resolved again.
    again, _ = resolve_config(Config.model_validate(config_to_dict(cfg)), tiny)
    assert again.quality == cfg.quality
    # An explicit value wins and nothing is calibrated for it; procedural data never asks FaceNet.
    explicit, explicit_cal = resolve_config(None, tiny, [*sets, "quality.identity_threshold=0.42"])
    assert explicit.quality.identity_threshold == 0.42 and "facenet" not in explicit_cal
    assert "facenet" not in resolve_config(None, tiny)[1]


def test_checkpoint_config_mismatch_is_refused(tiny: Path, tmp_path: Path) -> None:
    cfg = cfg_for(tiny)
    other = load_config(None, [f"data.root={cfg.data.root}", "model.backbone=small", "model.id_dim=32"])
    with pytest.raises(CheckpointError, match=r"model\.id_dim: checkpoint=16 config=32"):
        generate_dataset(other, tiny, tmp_path / "out")


# --------------------------------------------------------------------------- shards / resume


class Stop(Exception):
    pass


def _fail_after(monkeypatch: pytest.MonkeyPatch, n: int, exc: BaseException) -> None:
    real = shards_mod.write_png
    calls = [0]

    def write(path: Path, data: bytes) -> None:
        calls[0] += 1
        if calls[0] > n:
            raise exc
        real(path, data)

    monkeypatch.setattr(shards_mod, "write_png", write)


def test_interrupted_run_resumes_to_the_clean_result(
    tiny: Path, tmp_path: Path, fast: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    clean = generate_dataset(None, tiny, tmp_path / "clean", overrides=fast, name="ds")
    assert clean.status == "rejected" and clean.n_shards == 5 and clean.n_images == 42

    # Killed in the middle of shard 2 (after 25 images were written).
    _fail_after(monkeypatch, 25, Stop())
    with pytest.raises(Stop):
        generate_dataset(None, tiny, tmp_path / "resumed", overrides=fast, name="ds")
    staging = tmp_path / "resumed" / STAGING_DIR / "ds"
    assert [i for i, _, _ in list_shards(staging)] == [0, 1]  # whole shards only
    monkeypatch.undo()
    resumed = generate_dataset(None, tiny, tmp_path / "resumed", overrides=fast, name="ds")
    assert (resumed.shards_skipped, resumed.shards_rendered) == (2, 3)

    a, b = manifest_of(clean.dataset_dir), manifest_of(resumed.dataset_dir)
    assert not b["sample_id"].duplicated().any() and len(b) == 42
    pd.testing.assert_frame_equal(a, b)
    # Same files, byte for byte.
    for name, sha in zip(b["file_name"], b["sha256"], strict=True):
        from pipeline.io_utils import sha256_file

        assert sha256_file(resumed.dataset_dir / name) == sha

    # A corrupt part is detected on the next run and only that shard is rendered again.
    part = shard_path(staging, 3, 5)
    part.write_bytes(part.read_bytes()[:100])
    again = generate_dataset(None, tiny, tmp_path / "resumed", overrides=fast, name="ds")
    assert (again.shards_skipped, again.shards_rendered) == (4, 1)
    pd.testing.assert_frame_equal(a, manifest_of(again.dataset_dir))


def test_disk_full_fails_the_shard_cleanly_and_a_rerun_completes(
    tiny: Path, tmp_path: Path, fast: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _fail_after(monkeypatch, 13, OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(ShardError, match=r"shard 1 of 5 .*disk full"):
        generate_dataset(None, tiny, tmp_path, overrides=fast, name="ds")
    staging = tmp_path / STAGING_DIR / "ds"
    assert [i for i, _, _ in list_shards(staging)] == [0]
    assert not list((staging / "manifest").glob(".tmp-*"))
    monkeypatch.undo()
    result = generate_dataset(None, tiny, tmp_path, overrides=fast, name="ds")
    assert result.shards_rendered == 4 and result.n_images == 42
    assert len(read_manifest(result.dataset_dir)) == 42


def test_render_is_independent_of_batch_composition(tiny: Path) -> None:
    cfg = cfg_for(tiny, "generate.repeats=2")
    plan = make_plan(cfg, tiny)
    plan.meta["name"] = "x"
    ctx = context_mod.get_context(plan)
    items = plan.items[:12]
    together = rendering_mod.render_items(ctx, plan, items)
    alone = np.concatenate([rendering_mod.render_items(ctx, plan, [it]) for it in reversed(items)])[::-1]
    # Per-sample seeds make the codes identical; BLAS may still differ in the last float bit, which
    # can flip a rounding: allow at most one grey level.
    assert np.abs(together.astype(int) - alone.astype(int)).max() <= 1


def test_edit_mask_checkpoint_draws_real_identities_over_their_base_photo(tiny: Path, tmp_path: Path) -> None:
    from pipeline.generate.plan import base_image_paths
    from pipeline.train.loop import Trainer

    data = cfg_for(tiny).data.root  # the module's tiny data, trained on again with an edit mask
    cfg = load_config(
        REPO / "configs" / "tiny.yaml",
        [f"data.root={data}", f"train.out_dir={tmp_path / 'run'}", "model.edit_mask=true"],
    )
    ckpt = Trainer(cfg).train()
    gen_cfg = cfg_for(
        ckpt,
        "generate.identity_sources=[real, novel]",
        "generate.n_novel=1",
        "generate.composite=mask",
        "generate.source_photos=first_neutral",
    )
    plan = make_plan(gen_cfg, ckpt)
    plan.meta["name"] = "x"
    labels = pd.read_parquet(Path(data) / "labels.parquet")
    real = [p for p in plan.identities if p.source.startswith("real")]
    novel = [p for p in plan.identities if p.source == "novel"]
    assert real and novel and all(p.base_image is None for p in novel)
    for p in real:  # the identity's neutral photo of its first session
        row = labels[labels["path"] == p.base_image].iloc[0]
        assert row["identity"] == p.identity_id and row["expression"] == "neutral"
        assert '"session":0' in row["nuisance"]
    assert base_image_paths(labels, [real[0].identity_id]) == {real[0].identity_id: real[0].base_image}

    ctx = context_mod.get_context(plan)
    items = [it for it in plan.items if it.identity_id in (real[0].identity_id, novel[0].identity_id)][:10]
    mixed = rendering_mod.render_items(ctx, plan, items)
    alone = np.concatenate([rendering_mod.render_items(ctx, plan, [it]) for it in items])
    assert np.abs(mixed.astype(int) - alone.astype(int)).max() <= 1  # a batch's mix changes nothing
    head = ctx.generator.to_mask[-1]
    saved = head.bias.detach().clone(), head.weight.detach().clone()
    try:
        with torch.no_grad():  # a mask that keeps every pixel: real renders are their base photo
            head.weight.zero_()
            head.bias.fill_(-50.0)
        kept = rendering_mod.render_items(ctx, plan, items)
    finally:
        with torch.no_grad():
            head.bias.copy_(saved[0])
            head.weight.copy_(saved[1])
    base = ctx.images[ctx.base_rows[real[0].identity_id]].permute(1, 2, 0).numpy()
    for it, img in zip(items, kept, strict=True):
        if it.identity_id == real[0].identity_id:
            assert np.abs(img.astype(int) - base.astype(int)).max() <= 1
        else:  # a novel identity has no photo: drawn from its codes alone, as before
            assert np.abs(img.astype(int) - base.astype(int)).mean() > 5
    context_mod._CONTEXTS.clear()


def test_a_photo_reading_generator_draws_novel_identities_neutral_first_then_over_that_render(
    tiny: Path, tmp_path: Path
) -> None:
    from pipeline.train.loop import Trainer

    sets = [f"train.out_dir={tmp_path / 'run'}", "model.edit_mask=true", "model.photo_skips=true"]
    cfg = load_config(REPO / "configs" / "tiny.yaml", [f"data.root={cfg_for(tiny).data.root}", *sets])
    ckpt = Trainer(cfg).train()
    gen_cfg = cfg_for(ckpt, "generate.identity_sources=[novel]", "generate.n_novel=1", "generate.composite=mask")
    plan = make_plan(gen_cfg, ckpt)
    plan.meta["name"] = "x"
    ctx = context_mod.get_context(plan)
    items = plan.items[:7]
    w_id, w_exp = rendering_mod.sample_codes(ctx, plan, items)
    head = ctx.generator.to_mask[-1]
    saved = head.bias.detach().clone(), head.weight.detach().clone()
    try:
        with torch.no_grad():  # a mask that keeps every pixel: each render is the identity's neutral render
            head.weight.zero_()
            head.bias.fill_(-50.0)
            kept = rendering_mod.render_items(ctx, plan, items)
            neutral = ctx.generator(w_id, ctx.codes["exp_neutral"].expand(len(items), -1), ctx.resolution, 1.0)
    finally:
        with torch.no_grad():
            head.bias.copy_(saved[0])
            head.weight.copy_(saved[1])
    assert len({it.expression for it in items}) > 1 and len({it.identity_id for it in items}) == 1
    assert np.abs(kept.astype(int) - to_uint8(neutral.clamp(-1, 1)).astype(int)).max() <= 1
    # With its mask open the expression is redrawn over that face, not drawn from the codes alone.
    drawn = rendering_mod.render_items(ctx, plan, items)
    with torch.no_grad():
        alone = to_uint8(ctx.generator(w_id, w_exp, ctx.resolution, 1.0))
    assert np.abs(drawn.astype(int) - alone.astype(int)).mean() > 1
    context_mod._CONTEXTS.clear()


def test_difference_composite_draws_real_identities_over_their_photo_with_its_own_expression(tiny: Path) -> None:
    # Any checkpoint (the module's has no edit mask): real identities get a base photo, novel ones not.
    sets = ["generate.identity_sources=[real, novel]", "generate.n_novel=1", "generate.source_photos=first_neutral"]
    plan = make_plan(cfg_for(tiny, *sets), tiny)
    plan.meta["name"] = "x"
    real = [p for p in plan.identities if p.source.startswith("real")]
    novel = [p for p in plan.identities if p.source == "novel"]
    assert real and all(p.base_image for p in real) and all(p.base_image is None for p in novel)
    ctx = context_mod.get_context(plan)
    items = [it for it in plan.items if it.identity_id in (real[0].identity_id, novel[0].identity_id)][:10]
    got = rendering_mod.render_items(ctx, plan, items)
    w_id, w_exp = rendering_mod.sample_codes(ctx, plan, items)
    with torch.no_grad():
        photo = ctx.images[ctx.base_rows[real[0].identity_id]][None].float() / 127.5 - 1.0
        encoder = load_trained(Path(plan.meta["checkpoint"]["path"]))[1].encoder
        _, own = encoder(photo)  # the expression the photo has, as the encoder reads it
        for i, it in enumerate(items):
            if it.identity_id == real[0].identity_id:
                want = ctx.generator.edit(w_id[i : i + 1], w_exp[i : i + 1], own, photo, ctx.resolution)[0]
            else:
                want = ctx.generator(w_id[i : i + 1], w_exp[i : i + 1], ctx.resolution, 1.0)
            assert np.abs(got[i].astype(int) - to_uint8(want.clamp(-1, 1))[0].astype(int)).max() <= 1, it.sample_id
    context_mod._CONTEXTS.clear()


def test_each_render_starts_from_the_next_of_its_identitys_photos_with_that_photos_codes(tiny: Path) -> None:
    from pipeline.generate.plan import identity_photos

    sets = ["generate.identity_sources=[real, novel]", "generate.n_novel=1", "generate.repeats=3"]
    plan = make_plan(cfg_for(tiny, *sets), tiny)
    plan.meta["name"] = "x"
    labels = pd.read_parquet(Path(cfg_for(tiny).data.root) / "labels.parquet")
    real = [p.identity_id for p in plan.identities if p.source.startswith("real")]
    photos = identity_photos(labels, real)
    for ident in real:
        used = [it.source_image for it in plan.items if it.identity_id == ident]
        assert len(set(used)) == min(len(used), len(photos[ident]))  # each photo once before any repeats
        assert set(used) <= set(photos[ident])
        sessions = labels.set_index("path").loc[used, "nuisance"]
        assert sessions.nunique() > 1  # not one photo's session, pose and light for every render
    assert all(it.source_image is None for it in plan.items if it.identity_source == "novel")
    assert len({it.sample_id for it in plan.items}) == len(plan.items)

    ctx = context_mod.get_context(plan)
    items = [it for it in plan.items if it.identity_id == real[0]][:6]
    items.append(next(it for it in plan.items if it.identity_source == "novel"))
    w_id, w_exp = rendering_mod.sample_codes(ctx, plan, items)
    encoder = load_trained(Path(plan.meta["checkpoint"]["path"]))[1].encoder
    rows = [ctx.source_rows[it.source_image] for it in items[:-1]]
    with torch.no_grad():
        own_id, own_exp = encoder(ctx.images[torch.tensor(rows)].float() / 127.5 - 1.0)
    clean = [i for i, it in enumerate(items[:-1]) if it.repeat == 0]
    assert torch.allclose(w_id[clean], own_id[clean], atol=1e-4)  # the photo's own identity code, not the mean
    assert torch.allclose(w_id[-1], torch.from_numpy(plan.codes[items[-1].code_row]))
    got = rendering_mod.render_items(ctx, plan, items)
    with torch.no_grad():
        for i in clean:
            photo = ctx.images[rows[i]][None].float() / 127.5 - 1.0
            want = ctx.generator.edit(own_id[i : i + 1], w_exp[i : i + 1], own_exp[i : i + 1], photo, ctx.resolution)[0]
            assert np.abs(got[i].astype(int) - to_uint8(want.clamp(-1, 1))[0].astype(int)).max() <= 1
    context_mod._CONTEXTS.clear()


def test_intensity_range_draws_each_renders_intensity(tiny: Path) -> None:
    plan = make_plan(cfg_for(tiny, "generate.intensity_range=[0.4, 0.9]", "generate.repeats=2"), tiny)
    expressive = [it.intensity for it in plan.items if it.expression != "neutral"]
    assert all(0.4 <= t <= 0.9 for t in expressive) and len(set(expressive)) > len(expressive) // 2
    assert all(it.intensity == 0.0 for it in plan.items if it.expression == "neutral")
    assert len(set(plan.class_counts().values())) == 1  # still balanced
    again = make_plan(cfg_for(tiny, "generate.intensity_range=[0.4, 0.9]", "generate.repeats=2"), tiny)
    assert [it.intensity for it in again.items] == [it.intensity for it in plan.items]
    with pytest.raises(ConfigError, match="not both"):
        cfg_for(tiny, "generate.intensity_range=[0.4, 0.9]", "generate.intensities=[0.5]")


# --------------------------------------------------------------------------- gates / publish


def test_rejected_dataset_stays_in_staging(tiny: Path, tmp_path: Path, fast: list[str]) -> None:
    result = generate_dataset(
        None, tiny, tmp_path, overrides=[*fast, *LENIENT_GATES, "quality.kid_ceiling=1e-12"], name="ds"
    )
    assert result.status == "rejected"
    assert "kid_mean" in result.failed_message and "required <= 1e-12" in result.failed_message
    assert not (tmp_path / "ds").exists()
    staging = tmp_path / STAGING_DIR / "ds"
    assert result.dataset_dir == staging
    marker = (staging / REJECTED_MARKER).read_text()
    assert "kid_mean" in marker
    assert (staging / "__quality_report" / "report.md").is_file()


def test_one_generation_reads_and_hashes_its_checkpoint_once(
    tiny: Path, tmp_path: Path, fast: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    import pipeline.core.trained as trained

    ckpt = Path(shutil.copy(tiny, tmp_path / "copy.pt"))  # a file this process has not opened yet
    reads, loads = [], []
    read, load = trained.read_checkpoint, torch.load
    monkeypatch.setattr(trained, "read_checkpoint", lambda p: reads.append(p) or read(p))
    monkeypatch.setattr(torch, "load", lambda f, *a, **k: loads.append(f) or load(f, *a, **k))
    result = generate_dataset(None, ckpt, tmp_path / "out", overrides=[*fast, *LENIENT_GATES], name="ds")
    assert result.n_images > 0
    assert reads == [ckpt]  # planning, rendering and checking share one read (and its sha256)
    assert ckpt not in [Path(f) for f in loads if isinstance(f, (str, Path))]


def test_published_dataset_is_readable_and_passes_the_audit(
    tiny: Path, tmp_path: Path, fast: list[str], ideal_classifier: None
) -> None:
    sets = [*fast, *LENIENT_GATES, "generate.identity_sources=[real, novel]", "generate.n_novel=2"]
    result = generate_dataset(None, tiny, tmp_path, overrides=sets, name="ds")
    assert result.status == "published", result.failed_message
    root = tmp_path / "ds"
    assert result.dataset_dir == root and not (tmp_path / STAGING_DIR / "ds").exists()
    df = read_manifest(root)
    assert len(df) == 8 * 7 and df["expression"].value_counts().nunique() == 1
    assert df.loc[df["identity_source"] == "real:train", "ssim_truth"].notna().all()
    assert df.loc[df["identity_source"] == "novel", "ssim_truth"].isna().all()
    audit = audit_dataset(root)
    assert audit.ok, audit.problems
    assert audit.lineage["checkpoint"]["sha256"] == df["checkpoint_sha256"].iloc[0]
    assert (root / "__quality_report" / "sample_grid.png").is_file()
    meta = __import__("manifests.reader", fromlist=["x"]).read_dataset_meta(root)
    assert meta["status"] == "published" and "kid_mean" in meta["metrics"]

    # The same command again: nothing to do.
    again = generate_dataset(None, tiny, tmp_path, overrides=sets, name="ds")
    assert again.published and again.shards_rendered == 0
    # Another plan under the same name: refused unless overwrite.
    with pytest.raises(FileExistsError, match="another dataset"):
        generate_dataset(None, tiny, tmp_path, overrides=[*sets, "generate.seed=5"], name="ds")


# --------------------------------------------------------------------------- Prefect flow


def test_flow_publishes_and_fails_on_a_rejected_dataset(
    tiny: Path, tmp_path: Path, fast: list[str], ideal_classifier: None, prefect_api: str
) -> None:
    from flows.generate import run_generate_flow

    ok = run_generate_flow(None, tiny, tmp_path, name="good", overrides=[*fast, *LENIENT_GATES], return_state=True)
    assert ok.is_completed(), ok.message
    assert ok.result()["status"] == "published"
    assert audit_dataset(tmp_path / "good").ok

    bad = run_generate_flow(
        None,
        tiny,
        tmp_path,
        name="bad",
        overrides=[*fast, *LENIENT_GATES, "quality.kid_ceiling=1e-12"],
        return_state=True,
    )
    assert bad.is_failed()
    assert "kid_mean" in bad.message and "1e-12" in bad.message
    assert not (tmp_path / "bad").exists() and (tmp_path / STAGING_DIR / "bad" / REJECTED_MARKER).is_file()


@pytest.mark.slow
def test_dask_runner_gives_the_same_dataset(tiny: Path, tmp_path: Path, fast: list[str], prefect_api: str) -> None:
    pytest.importorskip("prefect_dask")
    from flows.generate import run_generate_flow

    threads = generate_dataset(None, tiny, tmp_path / "t", overrides=fast, name="ds")
    state = run_generate_flow(
        None,
        tiny,
        tmp_path / "d",
        name="ds",
        overrides=[*fast, "generate.task_runner=dask", "generate.max_workers=2"],
        return_state=True,
    )
    assert state.is_failed() and "rejected" in state.message  # the tiny GAN fails the gates either way
    pd.testing.assert_frame_equal(manifest_of(threads.dataset_dir), manifest_of(tmp_path / "d" / STAGING_DIR / "ds"))
    assert load_plan(threads.dataset_dir).key == load_plan(tmp_path / "d" / STAGING_DIR / "ds").key


def test_rejected_dataset_is_re_judged_without_re_rendering(
    tiny: Path, tmp_path: Path, fast: list[str], ideal_classifier: None
) -> None:
    first = generate_dataset(
        None, tiny, tmp_path, overrides=[*fast, *LENIENT_GATES, "quality.kid_ceiling=1e-12"], name="ds"
    )
    assert first.status == "rejected" and first.failed_message.startswith("kid_mean")
    # Relaxing a dataset gate re-judges the staged shards as they are, then publishes.
    second = generate_dataset(None, tiny, tmp_path, overrides=[*fast, *LENIENT_GATES], name="ds")
    assert second.published and second.shards_rendered == 0
    assert not (second.dataset_dir / REJECTED_MARKER).exists()
    images = {p.relative_to(second.dataset_dir): p.stat() for p in (second.dataset_dir / "images").rglob("*.png")}
    # A per-image threshold change on a published dataset: its renders re-scored in staging, not
    # re-rendered (same files, new flags); here it fails, so the published one stays as it was.
    with pytest.raises(FileExistsError, match="another dataset"):
        generate_dataset(
            None, tiny, tmp_path, overrides=[*fast, *LENIENT_GATES, "quality.expression_threshold=0.95"], name="ds"
        )
    third = generate_dataset(
        None,
        tiny,
        tmp_path,
        overrides=[*fast, *LENIENT_GATES, "quality.expression_threshold=0.95"],
        name="ds",
        overwrite=True,
    )
    assert third.status == "rejected" and third.shards_rendered == 0
    for rel, st in images.items():  # the staged renders are the published files, untouched
        staged = (third.dataset_dir / rel).stat()
        assert (staged.st_ino, staged.st_mtime_ns) == (st.st_ino, st.st_mtime_ns), rel
    assert "class_balance" in third.failed_message  # no render reaches p_target 0.95 now
    assert not read_manifest(third.dataset_dir)["expression_pass"].any()
    pd.testing.assert_frame_equal(
        manifest_of(second.dataset_dir)[["sample_id", "sha256"]],
        manifest_of(third.dataset_dir)[["sample_id", "sha256"]],
    )
    assert audit_dataset(second.dataset_dir).ok
    # A change that passes replaces the published set, again without rendering an image.
    fourth = generate_dataset(
        None,
        tiny,
        tmp_path,
        overrides=[*fast, *LENIENT_GATES, "quality.expression_threshold=0.85"],
        name="ds",
        overwrite=True,
    )
    assert fourth.published and fourth.shards_rendered == 0
    assert read_manifest(fourth.dataset_dir)["expression_pass"].all()
    assert all((fourth.dataset_dir / rel).stat().st_mtime_ns == st.st_mtime_ns for rel, st in images.items())
    assert audit_dataset(fourth.dataset_dir).ok


def test_judged_alike_ignores_how_thresholds_were_found(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import pipeline.generate.staging as staging_mod
    from pipeline.generate.staging import _judged_alike

    cfg = load_config(None, ["quality.expression_threshold=0.7"])
    card = config_to_dict(cfg.quality)
    card.pop("calibration_max_images")  # a card written before it existed
    monkeypatch.setattr(staging_mod, "read_dataset_meta", lambda final: {"thresholds": card})
    assert _judged_alike(tmp_path, cfg)  # a rerun of the same command stays a no-op
    card["calibration"] = {"checkpoint": {"applied": ["expression_threshold"]}}  # how they were found
    assert _judged_alike(tmp_path, cfg)
    cfg.quality.expression_threshold = 0.8
    assert not _judged_alike(tmp_path, cfg)  # another threshold: the dataset must be judged again

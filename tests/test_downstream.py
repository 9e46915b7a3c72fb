"""Downstream use: torch datasets over a manifest and a labelled table, filters, exports, versions."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from conftest import make_real, manifest_from_labels
from torch.utils.data import ConcatDataset, DataLoader
from typer.testing import CliRunner

from manifests.schema import DATASET_METADATA_KEY, MANIFEST_SCHEMA_VERSION, ManifestError
from manifests.status import DatasetStatusError
from manifests.writer import shard_path
from pipeline.adapters.labelmap import map_name
from pipeline.cli import app
from pipeline.config import load_config
from pipeline.downstream import LabelledDataset, ManifestDataset, export_hf, export_imagefolder
from pipeline.expressions import EXPRESSIONS


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("downstream")
    real = make_real(base / "real")
    syn = manifest_from_labels(real, base / "syn", fail_every=4)
    return real, syn


def test_manifest_dataset_filters_and_items(data: tuple[Path, Path]) -> None:
    _, syn = data
    everything = ManifestDataset(syn, require_pass=False)
    passed = ManifestDataset(syn)
    assert len(passed) == sum(everything.frame["all_pass"]) < len(everything)
    image, label = passed[0]
    assert image.shape == (3, 16, 16) and image.dtype == torch.float32 and 0 <= image.min() <= image.max() <= 1
    assert label == EXPRESSIONS.index(passed.frame["expression"].iloc[0])

    happy = ManifestDataset(syn, filters={"expression": ["happy", "sad"]}, require_pass=False)
    assert set(happy.frame["expression"]) == {"happy", "sad"} and set(happy.labels.tolist()) == {1, 2}
    strong = ManifestDataset(syn, filters="intensity > 0.6 and expression != 'neutral'")
    assert len(strong) and (strong.frame["intensity"] > 0.6).all()
    both = ManifestDataset(syn, filters=["intensity > 0.6", "expression == 'fear'"])
    assert set(both.frame["expression"]) == {"fear"}

    item = ManifestDataset(syn, return_dict=True, image_size=8)[0]
    assert item["image"].shape == (3, 8, 8) and item["source"] == "synthetic" and item["identity_id"].startswith("syn-")

    with pytest.raises(ManifestError, match=r"unknown column.*'colour'.*valid columns: sample_id"):
        ManifestDataset(syn, filters={"colour": "red"})
    with pytest.raises(ManifestError, match="valid columns"):
        ManifestDataset(syn, filters="colour == 'red'")


def test_dataloader_with_workers_mixes_real_and_synthetic(data: tuple[Path, Path]) -> None:
    real, syn = data
    train = LabelledDataset(real, split="train", return_dict=True)
    assert set(train.frame["split"]) == {"train"}
    mixed = ConcatDataset([ManifestDataset(syn, return_dict=True), train])
    loader = DataLoader(mixed, batch_size=32, shuffle=True, num_workers=2, generator=torch.Generator().manual_seed(0))
    seen, sources = 0, set()
    for batch in loader:
        assert batch["image"].shape[1:] == (3, 16, 16) and batch["label"].dtype == torch.int64
        seen += len(batch["label"])
        sources.update(batch["source"])
    assert seen == len(mixed) and sources == {"synthetic", "procedural"}

    ids = sorted(train.frame["identity"].unique())[:2]
    few = LabelledDataset(real, split="train", identities=ids)
    assert set(few.frame["identity"]) == set(ids)
    with pytest.raises(ManifestError, match="valid columns"):
        LabelledDataset(real, filters={"nope": 1})


def test_newer_schema_version_is_a_clear_error(data: tuple[Path, Path], tmp_path: Path) -> None:
    _, syn = data
    copy = tmp_path / "newer"
    shutil.copytree(syn, copy)
    path = shard_path(copy, 0, 2)
    table = pq.read_table(path)
    ours = f'"schema_version": {MANIFEST_SCHEMA_VERSION}'.encode()
    meta = table.schema.metadata[DATASET_METADATA_KEY].replace(ours, b'"schema_version": 99')
    pq.write_table(table.replace_schema_metadata({DATASET_METADATA_KEY: meta}), path)
    with pytest.raises(
        ManifestError, match=rf"schema version 99 is newer than this fersynth reads \({MANIFEST_SCHEMA_VERSION}\)"
    ):
        ManifestDataset(copy)


def test_export_imagefolder(data: tuple[Path, Path], tmp_path: Path) -> None:
    _, syn = data
    result = export_imagefolder(syn, tmp_path / "if", filters={"expression": ["happy", "anger"]})
    files = sorted((tmp_path / "if").rglob("*.png"))
    # Class folders `<label>_<expression>`: sorted by name, they follow the label order (torchvision, Keras).
    assert len(files) == result["images"] > 0 and {f.parent.name for f in files} == {"1_happy", "5_anger"}
    assert list(result["per_class"]) == ["happy", "anger"]  # counts in the label order too
    assert {map_name(f.parent.name) for f in files} == {"happy", "anger"}  # `data import folder` reads them back
    assert result["copy"] == len(files) and result["link"] == 0  # copies unless --link is asked for
    with pytest.raises(FileExistsError, match="not empty"):
        export_imagefolder(syn, tmp_path / "if")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")] == []


def _own_copy(syn: Path, tmp_path: Path) -> Path:
    """A copy of the module's generated set that a test may damage."""
    return Path(shutil.copytree(syn, tmp_path / "src"))


def _edit_bytes(path: Path) -> None:
    path.write_bytes(path.read_bytes() + b"edited")


def test_editing_an_export_never_touches_the_source(data: tuple[Path, Path], tmp_path: Path) -> None:
    _, syn = data
    src = _own_copy(syn, tmp_path)
    export_imagefolder(src, tmp_path / "copied")
    _edit_bytes(next((tmp_path / "copied").rglob("*.png")))
    assert audit_problems(src) == set()

    linked = export_imagefolder(src, tmp_path / "linked", link=True)
    assert linked["link"] == linked["images"]  # opt-in: hard links, and then an edit does reach the source
    _edit_bytes(next((tmp_path / "linked").rglob("*.png")))
    assert "hash_mismatch" in audit_problems(src)


def audit_problems(root: Path) -> set[str]:
    from pipeline.audit import audit_dataset

    return {p.code for p in audit_dataset(root).problems} - {"card_missing"}  # these test sets have no card


def test_export_refuses_a_tampered_image_naming_it_and_writes_nothing(data: tuple[Path, Path], tmp_path: Path) -> None:
    _, syn = data
    src = _own_copy(syn, tmp_path)
    name = pq.read_table(src / "metadata.parquet", columns=["file_name"]).column(0)[-1].as_py()
    _edit_bytes(src / name)
    for link in (False, True):
        out = tmp_path / f"out-{link}"
        with pytest.raises(ManifestError, match=rf"{name}: sha256 differs from the manifest"):
            export_imagefolder(src, out, require_pass=False, link=link)
        assert not out.exists() and not list(tmp_path.glob(".tmp-*"))


@pytest.mark.parametrize("how", ["REJECTED file", "card status", "no _SUCCESS"])
def test_export_refuses_a_rejected_or_unfinished_set_unless_allowed(
    data: tuple[Path, Path], tmp_path: Path, how: str
) -> None:
    _, syn = data
    src = _own_copy(syn, tmp_path)
    if how == "REJECTED file":
        (src / "REJECTED").write_text(json.dumps({"message": "rejected: kid_mean 0.3 > 0.05"}))
    elif how == "card status":
        (src / "dataset_card.json").write_text(json.dumps({"status": "rejected"}))
    else:
        (src / "_SUCCESS").unlink()
    with pytest.raises(DatasetStatusError, match="--allow-rejected"):
        export_hf(src, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
    assert export_hf(src, tmp_path / "hf", allow_rejected=True)["images"] > 0


def test_a_truncated_shard_is_named(data: tuple[Path, Path], tmp_path: Path) -> None:
    _, syn = data
    src = _own_copy(syn, tmp_path)
    shard = shard_path(src, 1, 2)
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(ManifestError, match=rf"{shard}: cannot read Parquet"):
        ManifestDataset(src)
    (src / "_SUCCESS").unlink()  # even with the shard check of a finalized set out of the way
    with pytest.raises(ManifestError, match=rf"{shard}: cannot read Parquet"):
        export_imagefolder(src, tmp_path / "out", allow_rejected=True)


def test_export_cli_copies_warns_on_link_and_refuses_rejected_in_one_line(
    data: tuple[Path, Path], tmp_path: Path
) -> None:
    _, syn = data
    src = _own_copy(syn, tmp_path)
    runner = CliRunner()
    copied = runner.invoke(app, ["export-dataset", str(src), str(tmp_path / "a")])
    assert copied.exit_code == 0 and "0 linked" in copied.output and "warning" not in copied.output
    linked = runner.invoke(app, ["export-dataset", str(src), str(tmp_path / "b"), "--link"])
    assert linked.exit_code == 0 and "warning:" in linked.output and "edits" in linked.output
    (src / "REJECTED").write_text(json.dumps({"message": "rejected: pass_rate 0.1 < 0.5"}))
    refused = runner.invoke(app, ["export-dataset", str(src), str(tmp_path / "c")])
    errors = [ln for ln in refused.output.splitlines() if ln.startswith("error:")]
    assert refused.exit_code == 2 and len(errors) == 1, refused.output
    assert "REJECTED" in errors[0] and "pass_rate 0.1 < 0.5" in errors[0] and "--allow-rejected" in errors[0]
    allowed = runner.invoke(app, ["export-dataset", str(src), str(tmp_path / "c"), "--allow-rejected"])
    assert allowed.exit_code == 0 and "warning: using a rejected dataset" in allowed.output


def test_tstr_refuses_a_rejected_synthetic_set_before_training(data: tuple[Path, Path], tmp_path: Path) -> None:
    real, syn = data
    src = _own_copy(syn, tmp_path)
    (src / "REJECTED").write_text(json.dumps({"message": "rejected: kid_mean 0.3 > 0.05"}))
    args = ["tstr", "--synthetic", str(src), "--real", str(real), "--out", str(tmp_path / "t")]
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 2 and "--allow-rejected" in refused.output, refused.output
    assert not (tmp_path / "t").exists()
    from pipeline.tstr import run_tstr

    with pytest.raises(DatasetStatusError, match="tstr refuses a rejected dataset"):
        run_tstr(src, real, load_config(None, []).tstr, tmp_path / "t")


def test_export_hf_loads_with_datasets(data: tuple[Path, Path], tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    _, syn = data
    out = tmp_path / "hf"
    result = export_hf(syn, out, link=False)
    assert result["copy"] == result["images"]
    loaded = datasets.load_dataset("imagefolder", data_dir=str(out), split="train", cache_dir=str(tmp_path / "c"))
    assert len(loaded) == result["images"] == len(ManifestDataset(syn))
    row = loaded[0]
    assert row["image"].size == (16, 16) and EXPRESSIONS[row["label"]] == row["expression"]
    assert {"identity_id", "intensity", "sample_id", "sha256"} <= set(loaded.column_names)
    assert loaded.features["label"].names == list(EXPRESSIONS)  # a ClassLabel, all seven, no cast needed
    assert loaded.features["label"].int2str(row["label"]) == row["expression"]
    assert "no cast needed" in (out / "README.md").read_text()

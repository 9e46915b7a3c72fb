"""Dataset audit: passes on a clean dataset, catches each kind of tampering, and the CLI reports it."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import N_SHARDS, build_dataset, final_meta
from typer.testing import CliRunner

from manifests.card import CARD_JSON
from manifests.schema import DATASET_METADATA_KEY, hf_label_metadata
from manifests.writer import finalize, shard_path
from pipeline.audit import audit_dataset
from pipeline.cli import app
from pipeline.expressions import EXPRESSIONS


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    root = tmp_path / "ds"
    build_dataset(root)
    return root


def _rewrite_shard(root: Path, edit: Callable[[list[dict]], list[dict]]) -> None:
    """Tamper with shard 0 behind the writer's back, keeping its schema and metadata."""
    path = shard_path(root, 0, N_SHARDS)
    table = pq.read_table(path)
    rows = edit(table.to_pylist())
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), path)


def _first_image(root: Path) -> Path:
    return next((root / "images").rglob("*.png"))


def _edit_card(root: Path, edit: Callable[[dict], object]) -> None:
    card = json.loads((root / CARD_JSON).read_text())
    edit(card)
    (root / CARD_JSON).write_text(json.dumps(card))


def _edit_card_count(root: Path) -> None:
    _edit_card(
        root, lambda c: c["stats"]["counts"]["expression"].update(happy=c["stats"]["counts"]["expression"]["happy"] + 1)
    )


TAMPERING: dict[str, tuple[Callable[[Path], None], str]] = {
    "modified image": (lambda r: _first_image(r).write_bytes(_first_image(r).read_bytes() + b"x"), "hash_mismatch"),
    "deleted image": (lambda r: _first_image(r).unlink(), "missing_file"),
    "duplicated row": (lambda r: _rewrite_shard(r, lambda rows: [*rows, rows[0]]), "duplicate_sample_id"),
    "path escape": (
        lambda r: _rewrite_shard(r, lambda rows: [{**rows[0], "file_name": "../x.png"}, *rows[1:]]),
        "path_escape",
    ),
    "edited card count": (_edit_card_count, "card_mismatch"),
    "gate verdict flipped": (
        lambda r: _edit_card(r, lambda c: c["gates"][0].update(passed=False)),
        "gate_inconsistent",
    ),
    "gate value edited": (
        lambda r: _edit_card(r, lambda c: c["gates"][0].update(value=0.99)),  # pass_rate the rows do not give
        "gate_mismatch",
    ),
    "per-image verdicts flipped": (
        lambda r: _rewrite_shard(r, lambda rows: [{**row, "all_pass": False} for row in rows]),
        "gate_mismatch",
    ),
    "unfinished run": (lambda r: (r / "_SUCCESS").unlink(), "not_finalized"),
}


@pytest.fixture
def full_dataset(tmp_path: Path) -> Path:
    """A dataset holding every file generation writes (plan, codes, report), finalized so their hashes are recorded."""
    root = tmp_path / "full"
    rows = build_dataset(root)
    (root / "plan.json").write_text(json.dumps({"format": "fersynth.generate.plan.v1", "items": 8}))
    np.save(root / "identity_codes.npy", np.zeros((3, 4), np.float32))
    (root / "__quality_report").mkdir()
    (root / "__quality_report" / "report.md").write_text("# Quality report\n\nall gates passed\n")
    finalize(root, final_meta(rows))
    return root


def _relabel_imagefolder_copy(root: Path) -> None:
    """Every label in metadata.parquet (what `load_dataset("imagefolder")` reads) set to sad, schema metadata kept."""
    path = root / "metadata.parquet"
    table = pq.read_table(path)
    column = table.schema.get_field_index("expression")
    sad = pa.array(["sad"] * len(table), table.schema.field("expression").type)
    pq.write_table(table.set_column(column, table.schema.field("expression"), sad), path)


def _append(root: Path, rel: str, data: bytes) -> None:
    (root / rel).write_bytes((root / rel).read_bytes() + data)


def _edit_kid_with_its_gate(root: Path) -> None:
    """metrics.kid_mean and the kid gate's value edited together: they agree with each other, not with the record."""

    def edit(card: dict) -> None:
        card["metrics"]["kid_mean"] = 0.001
        next(g for g in card["gates"] if g["name"] == "kid_mean")["value"] = 0.001

    _edit_card(root, edit)


def _mark_rejected_in_card_only(root: Path) -> None:
    """What a rejected run killed between _SUCCESS and REJECTED left before the fix: a card saying rejected."""
    _edit_card(root, lambda c: c.update(status="rejected"))


# Each of these passed `fersynth audit` before issue 30 ("OK: no problems found", exit 0).
UNSEEN_BEFORE: dict[str, tuple[Callable[[Path], None], str]] = {
    "metadata.parquet relabelled": (_relabel_imagefolder_copy, "metadata_mismatch"),
    "README.md edited": (lambda r: _append(r, "README.md", b"\nAll images hand-checked.\n"), "file_modified"),
    "plan.json edited": (lambda r: _append(r, "plan.json", b" "), "file_modified"),
    "identity_codes.npy edited": (
        lambda r: np.save(r / "identity_codes.npy", np.ones((3, 4), np.float32)),
        "file_modified",
    ),
    "croissant.json edited": (lambda r: _append(r, "croissant.json", b" "), "file_modified"),
    "report.md edited": (lambda r: _append(r, "__quality_report/report.md", b"edited\n"), "file_modified"),
    "REJECTED added to a published set": (lambda r: (r / "REJECTED").write_text('{"message": "x"}'), "status_mismatch"),
    "kid metric and gate edited together": (_edit_kid_with_its_gate, "card_mismatch"),
    "card rejected without REJECTED": (_mark_rejected_in_card_only, "status_mismatch"),
    "empty unknown image folder": (lambda r: (r / "images" / "bored").mkdir(), "stray_folder"),
    "usefulness.json added after finalize": (
        lambda r: (r / "usefulness.json").write_text('{"usefulness_ratio": 1.0}'),
        "file_unrecorded",
    ),
}


@pytest.mark.parametrize("case", list(UNSEEN_BEFORE))
def test_audit_catches_what_it_used_to_miss(full_dataset: Path, case: str) -> None:
    assert audit_dataset(full_dataset).ok, audit_dataset(full_dataset).problems
    tamper, code = UNSEEN_BEFORE[case]
    tamper(full_dataset)
    result = audit_dataset(full_dataset)
    assert code in {p.code for p in result.problems}, result.problems


def test_relabelled_metadata_names_the_column_and_a_sample(full_dataset: Path) -> None:
    _relabel_imagefolder_copy(full_dataset)
    (problem,) = [p for p in audit_dataset(full_dataset).problems if p.code == "metadata_mismatch"]
    assert "column 'expression'" in problem.message and problem.sample


def _edit_imagefolder_copy(root: Path, edit: Callable[[pa.Table], pa.Table]) -> None:
    path = root / "metadata.parquet"
    pq.write_table(edit(pq.read_table(path)), path)


def _shift_labels(table: pa.Table) -> pa.Table:
    i = table.schema.get_field_index("label")
    return table.set_column(i, table.schema.field(i), pc.add(table.column(i), 1))


# metadata.parquet's `label` is what `load_dataset("imagefolder")` gives as the class: (tampering, code, words).
LABEL_TAMPERING: dict[str, tuple[Callable[[Path], None], str, str]] = {
    "labels shifted": (lambda r: _edit_imagefolder_copy(r, _shift_labels), "metadata_mismatch", "column 'label'"),
    "ClassLabel names reordered": (
        lambda r: _edit_imagefolder_copy(
            r, lambda t: t.replace_schema_metadata({**t.schema.metadata, **hf_label_metadata(EXPRESSIONS[::-1])})
        ),
        "metadata_mismatch",
        "a ClassLabel named ['disgust'",
    ),
    "no label column (an older fersynth)": (
        lambda r: _edit_imagefolder_copy(r, lambda t: t.drop_columns(["label"])),
        "metadata_mismatch",
        "no 'label' column",
    ),
    "card label order edited": (
        lambda r: _edit_card(r, lambda c: c["labels"].update(names=sorted(EXPRESSIONS))),
        "card_mismatch",
        "labels.names",
    ),
}


@pytest.mark.parametrize("case", list(LABEL_TAMPERING))
def test_audit_checks_the_label_order(full_dataset: Path, case: str) -> None:
    tamper, code, words = LABEL_TAMPERING[case]
    tamper(full_dataset)
    (problem,) = [p for p in audit_dataset(full_dataset).problems if p.code == code]
    assert words in problem.message, problem


def test_audit_reports_a_rejected_set_as_rejected(full_dataset: Path) -> None:
    rejected = full_dataset.parent / "rejected"
    rows = build_dataset(rejected)
    (rejected / "REJECTED").write_text(json.dumps({"message": "rejected: kid_mean 0.2 > 0.05"}))
    finalize(rejected, {**final_meta(rows), "status": "rejected"})
    result = audit_dataset(rejected)
    assert result.ok, result.problems  # consistent files: the status, not a problem, says it is rejected
    assert result.status == "rejected" and "kid_mean 0.2 > 0.05" in result.status_reason
    shown = CliRunner().invoke(app, ["audit", str(rejected)])
    assert "status: REJECTED" in shown.stdout and "kid_mean 0.2 > 0.05" in shown.stdout
    assert json.loads(CliRunner().invoke(app, ["audit", str(rejected), "--json"]).stdout)["status"] == "rejected"
    assert audit_dataset(full_dataset).status == "published"


def test_clean_dataset_passes(dataset: Path) -> None:
    for check_hashes in (True, False):
        result = audit_dataset(dataset, check_hashes=check_hashes)
        assert result.ok, result.problems
    assert result.stats["n_rows"] == 8 and result.stats["counts"]["expression"]["neutral"] == 2
    assert result.lineage["checkpoint"]["step"] == 1200


def test_a_manifest_older_than_a_column_audits_clean_but_not_one_that_lost_it(dataset: Path) -> None:
    def drop_source_image(version: int) -> None:
        # The shards and their metadata.parquet copy, as a dataset written at `version` holds them.
        for path in [*(shard_path(dataset, i, N_SHARDS) for i in range(N_SHARDS)), dataset / "metadata.parquet"]:
            table = pq.read_table(path)
            meta = json.loads(table.schema.metadata[DATASET_METADATA_KEY])
            if "source_image" in table.column_names:
                table = table.drop_columns(["source_image"])
            table = table.replace_schema_metadata(
                {
                    **table.schema.metadata,
                    DATASET_METADATA_KEY: json.dumps({**meta, "schema_version": version}).encode(),
                }
            )
            pq.write_table(table, path)

    # Rewriting the shards and metadata.parquet changes their recorded hashes; nothing else may be found.
    drop_source_image(1)  # schema version 1 had no source_image
    assert {p.code for p in audit_dataset(dataset).problems} == {"shard_modified", "file_modified"}
    drop_source_image(2)
    assert "missing column 'source_image'" in str(audit_dataset(dataset).problems)


@pytest.mark.parametrize("case", list(TAMPERING))
def test_audit_catches_tampering(dataset: Path, case: str) -> None:
    tamper, code = TAMPERING[case]
    tamper(dataset)
    result = audit_dataset(dataset)
    assert code in {p.code for p in result.problems}, result.problems


def test_symlink_escaping_the_root_is_caught(dataset: Path, tmp_path: Path) -> None:
    image = _first_image(dataset)
    outside = tmp_path / "outside.png"
    outside.write_bytes(image.read_bytes())
    image.unlink()
    os.symlink(outside, image)
    assert "path_escape" in {p.code for p in audit_dataset(dataset).problems}


def test_hashes_skipped_with_no_hashes(dataset: Path) -> None:
    TAMPERING["modified image"][0](dataset)
    assert audit_dataset(dataset, check_hashes=False).ok


def test_random_folder_is_not_a_dataset_and_a_missing_one_is_not_found(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    result = audit_dataset(tmp_path)
    assert [p.code for p in result.problems] == ["not_a_dataset"]
    assert "not a fersynth dataset" in result.problems[0].message
    missing = audit_dataset(tmp_path / "missing")
    assert [p.code for p in missing.problems] == ["not_found"] and "does not exist" in missing.problems[0].message


def test_cli_exit_codes_and_json(dataset: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(app, ["audit", str(dataset)])
    assert ok.exit_code == 0, ok.output
    assert "OK" in ok.stdout and "checkpoint" in ok.stdout

    as_json = runner.invoke(app, ["audit", str(dataset), "--json", "--no-hashes"])
    assert as_json.exit_code == 0
    payload = json.loads(as_json.stdout)
    assert payload["ok"] is True and payload["problems"] == [] and payload["stats"]["hashes_checked"] is False

    _first_image(dataset).unlink()
    bad = runner.invoke(app, ["audit", str(dataset)])
    assert bad.exit_code == 1 and "missing_file" in bad.stdout
    payload = json.loads(runner.invoke(app, ["audit", str(dataset), "--json"]).stdout)
    assert payload["ok"] is False and [p["code"] for p in payload["problems"]] == ["missing_file"]

    (tmp_path / "nothing").mkdir()
    empty = runner.invoke(app, ["audit", str(tmp_path / "nothing"), "--json"])
    assert empty.exit_code == 1 and json.loads(empty.stdout)["problems"][0]["code"] == "not_a_dataset"
    # A mistyped path is bad input: one line naming it, exit 2, not "not a fersynth dataset".
    typo = runner.invoke(app, ["audit", str(tmp_path / "typo")])
    assert typo.exit_code == 2 and typo.stdout == ""
    assert [ln for ln in typo.output.splitlines() if ln.strip()] == [f"error: {tmp_path / 'typo'}: no such folder"]
    assert "manifest/part-*.parquet" in runner.invoke(app, ["audit", "--help"]).output

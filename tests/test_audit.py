"""Dataset audit: passes on a clean dataset, catches each kind of tampering, and the CLI reports it."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_manifest import N_SHARDS, build_dataset
from typer.testing import CliRunner

from manifests.audit import audit_dataset
from manifests.card import CARD_JSON
from manifests.schema import DATASET_METADATA_KEY
from manifests.writer import shard_path
from pipeline.cli import app


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


def test_clean_dataset_passes(dataset: Path) -> None:
    for check_hashes in (True, False):
        result = audit_dataset(dataset, check_hashes=check_hashes)
        assert result.ok, result.problems
    assert result.stats["n_rows"] == 8 and result.stats["counts"]["expression"]["neutral"] == 2
    assert result.lineage["checkpoint"]["step"] == 1200


def test_a_manifest_older_than_a_column_audits_clean_but_not_one_that_lost_it(dataset: Path) -> None:
    def drop_source_image(version: int) -> None:
        for index in range(N_SHARDS):
            path = shard_path(dataset, index, N_SHARDS)
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

    # Rewriting the shards changes their hashes (shard_modified); nothing else may be found.
    drop_source_image(1)  # schema version 1 had no source_image
    assert {p.code for p in audit_dataset(dataset).problems} == {"shard_modified"}
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


def test_random_folder_is_not_a_dataset(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    for root in (tmp_path, tmp_path / "missing"):
        result = audit_dataset(root)
        assert [p.code for p in result.problems] == ["not_a_dataset"]
        assert "not a fersynth dataset" in result.problems[0].message


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

    empty = runner.invoke(app, ["audit", str(tmp_path / "nothing"), "--json"])
    assert empty.exit_code == 1 and json.loads(empty.stdout)["problems"][0]["code"] == "not_a_dataset"

"""Generation reliability (issue 22): one writer per dataset, nothing stray ever published, every
filesystem failure in one line, and a crash-safe `--overwrite`.

The first five tests are the five holes the issue found, each as the hostile user met it. One tiny
procedural dataset and checkpoint per module (configs/tiny.yaml); tests that need a published dataset
relax the gates and stand in an ideal expression classifier, as tests/test_generate.py does.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import REPO, build_dataset, final_meta
from fast_settings import FAST_GENERATE, FAST_USEFULNESS, LENIENT_GATES
from typer.testing import CliRunner

import pipeline.generate.planning as planning_mod
import pipeline.generate.publishing as publishing_mod
import pipeline.generate.shards as shards_mod
from manifests.reader import read_manifest
from pipeline.audit import audit_dataset
from pipeline.cli import app
from pipeline.generate import STAGING_DIR, generate_dataset, load_plan


class Killed(BaseException):
    """Stands in for SIGKILL: nothing in the code under test catches it, so no cleanup runs."""


@pytest.fixture
def sets(fid_weights: Path, ideal_classifier: None) -> list[str]:
    """Overrides for a fast run that publishes: lenient gates and a classifier that always agrees."""
    return [*FAST_GENERATE, *FAST_USEFULNESS, *LENIENT_GATES, f"quality.fid_weights={fid_weights}"]


def cli_args(sets: list[str]) -> list[str]:
    return [arg for s in sets for arg in ("--set", s)]


def error_lines(output: str) -> list[str]:
    return [ln for ln in output.splitlines() if ln.startswith("error:")]


def files_named(root: Path, prefix: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(prefix)]


# --------------------------------------------------------------------------- 1. one writer per dataset


def test_a_second_generate_of_the_same_dataset_refuses_naming_the_first(
    tiny: Path, tmp_path: Path, sets: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first run pauses inside its first PNG write, as a long run would be mid-render.
    real_write, rendering, go_on = shards_mod.write_png, threading.Event(), threading.Event()

    def paused_once(path: Path, data: bytes) -> None:
        if not rendering.is_set():
            rendering.set()
            go_on.wait(timeout=300)
        real_write(path, data)

    monkeypatch.setattr(shards_mod, "write_png", paused_once)
    first: dict[str, object] = {}

    def run_first() -> None:
        try:
            first["result"] = generate_dataset(None, tiny, tmp_path, overrides=sets, name="ds")
        except BaseException as exc:  # reported by the asserts below
            first["error"] = exc

    thread = threading.Thread(target=run_first)
    thread.start()
    try:
        assert rendering.wait(timeout=300), first
        second = CliRunner().invoke(
            app, ["generate", "--checkpoint", str(tiny), "--out", str(tmp_path), "--name", "ds", *cli_args(sets)]
        )
    finally:
        go_on.set()
        thread.join(timeout=300)
    assert second.exit_code == 2, second.output
    (line,) = error_lines(second.output)
    assert "already running" in line and f"pid {os.getpid()}" in line and socket.gethostname() in line
    assert "started 20" in line  # the first run's start time
    assert "error" not in first, first
    assert first["result"].published  # type: ignore[attr-defined]
    assert read_manifest(tmp_path / "ds")["run_id"].nunique() == 1  # one run's rows, not two
    assert audit_dataset(tmp_path / "ds").ok


# --------------------------------------------------------------------------- 2. nothing stray published


def test_a_half_written_png_left_by_a_kill_is_not_published(
    tiny: Path, tmp_path: Path, sets: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write, calls = shards_mod.write_png, [0]

    def killed_mid_write(path: Path, data: bytes) -> None:
        calls[0] += 1
        if calls[0] > 15:  # in shard 1: half the bytes under the atomic write's temporary name, then dead
            (path.parent / f".tmp-{path.name}.k1ll3d").write_bytes(data[: len(data) // 2])
            raise Killed
        real_write(path, data)

    monkeypatch.setattr(shards_mod, "write_png", killed_mid_write)
    with pytest.raises(Killed):
        generate_dataset(None, tiny, tmp_path, overrides=sets, name="ds")
    staging = tmp_path / STAGING_DIR / "ds"
    assert len(files_named(staging / "images", ".tmp-")) == 1
    monkeypatch.setattr(shards_mod, "write_png", real_write)

    result = generate_dataset(None, tiny, tmp_path, overrides=sets, name="ds")
    assert result.published and result.shards_skipped == 1
    assert files_named(tmp_path / "ds", ".tmp-") == []
    assert audit_dataset(tmp_path / "ds").ok


def test_audit_flags_an_extra_png_and_a_stray_root_file(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    build_dataset(root)
    assert audit_dataset(root).ok
    listed = next((root / "images").rglob("*.png"))
    shutil.copy(listed, listed.with_name("not-in-the-manifest.png"))
    (root / "notes.txt").write_text("left here by hand\n")

    result = audit_dataset(root)
    strays = sorted(p.path for p in result.problems if p.code == "stray_file")
    extra = listed.with_name("not-in-the-manifest.png").relative_to(root).as_posix()
    assert strays == sorted([extra, "notes.txt"]), result.problems
    res = CliRunner().invoke(app, ["audit", str(root)])
    assert res.exit_code == 1 and "stray_file" in res.output and "notes.txt" in res.output


# --------------------------------------------------------------------------- 3. one line, exit 2, first


@pytest.mark.parametrize("kind", ["regular file", "read-only folder"])
def test_bad_out_is_one_line_and_exit_2_before_planning(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    def must_not_plan(*args: object, **kw: object) -> None:
        raise AssertionError("planned before checking --out")

    monkeypatch.setattr(planning_mod, "make_plan", must_not_plan)
    out = tmp_path / "out"
    if kind == "regular file":
        out.write_text("not a folder\n")
        cause = "is a regular file, not a folder"
    else:
        out.mkdir()
        out.chmod(0o555)
        cause = "is read-only"
    try:
        res = CliRunner().invoke(app, ["generate", "--checkpoint", str(tiny), "--out", str(out), "--name", "ds"])
    finally:
        out.chmod(0o755)
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    (line,) = error_lines(res.output)
    assert str(out) in line and cause in line
    assert res.output.strip() == line


# --------------------------------------------------------------------------- 4. crash-safe --overwrite


def test_a_kill_between_the_two_renames_of_an_overwrite_is_repaired_by_the_rerun(
    tiny: Path, tmp_path: Path, sets: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    first = generate_dataset(None, tiny, tmp_path, overrides=sets, name="ds")
    assert first.published
    final, staging = tmp_path / "ds", tmp_path / STAGING_DIR / "ds"
    other = [*sets, "generate.seed=5"]

    real_replace = os.replace

    def killed_before_the_second_rename(src: object, dst: object) -> None:
        if Path(src) == staging and Path(dst) == final:
            raise Killed
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", killed_before_the_second_rename)
    with pytest.raises(Killed):
        generate_dataset(None, tiny, tmp_path, overrides=other, name="ds", overwrite=True)
    monkeypatch.setattr(os, "replace", real_replace)
    assert not final.exists()  # the moment the issue found: neither dataset at OUT/<name>

    # Any rerun touching the dataset repairs it: this one does not even ask to overwrite.
    again = generate_dataset(None, tiny, tmp_path, overrides=other, name="ds")
    assert again.published and again.shards_rendered == 0
    assert load_plan(final).key == again.plan_key != first.plan_key
    assert audit_dataset(final).ok
    assert files_named(tmp_path / STAGING_DIR, ".old-") == []
    assert files_named(tmp_path / STAGING_DIR, ".ds.publish") == []


# --------------------------------------------------------------------------- beyond the five cases


HOLD_LOCK = """
import sys, time
from pipeline.locks import WriterLock
WriterLock(sys.argv[1], sys.argv[2]).acquire()
print("held", flush=True)
time.sleep(600)
"""


@pytest.fixture
def lock_holder():
    """Start another process holding the lock of a folder; yields a starter, kills what it started."""
    started: list[subprocess.Popen] = []

    def start(folder: Path, what: str) -> subprocess.Popen:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        proc = subprocess.Popen(
            [sys.executable, "-c", HOLD_LOCK, str(folder), what], stdout=subprocess.PIPE, text=True, env=env
        )
        started.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        return proc

    yield start
    for proc in started:
        proc.kill()
        proc.wait()


def test_a_lock_left_by_a_killed_run_is_taken_over(tmp_path: Path, lock_holder) -> None:
    from pipeline.locks import LockHeld, WriterLock

    folder = tmp_path / STAGING_DIR / "ds"
    holder = lock_holder(folder, "generation of dataset 'ds'")
    with pytest.raises(LockHeld, match=rf"pid {holder.pid} on {socket.gethostname()}, started "):
        WriterLock(folder, "generation").acquire()
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    lock = WriterLock(folder, "generation").acquire()
    try:
        assert lock.stale is not None and lock.stale.pid == holder.pid
    finally:
        lock.release()
    assert not folder.exists()  # the lock lives beside the folder it guards, never inside it


def test_generate_as_a_flow_refuses_a_held_dataset_in_one_line(
    tiny: Path, tmp_path: Path, sets: list[str], lock_holder, prefect_api: str
) -> None:
    holder = lock_holder(tmp_path / STAGING_DIR / "ds", "generation of dataset 'ds'")
    args = ["generate", "--flow", "--checkpoint", str(tiny), "--out", str(tmp_path), "--name", "ds", *cli_args(sets)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2, res.output
    (line,) = error_lines(res.output)
    assert f"pid {holder.pid}" in line and "already running" in line


@pytest.mark.parametrize("command", ["data make", "train"])
def test_data_make_and_training_refuse_a_second_writer(tmp_path: Path, lock_holder, command: str) -> None:
    out = tmp_path / "target"
    holder = lock_holder(out, command)
    tiny_yaml = str(REPO / "configs" / "tiny.yaml")
    args = {
        "data make": ["data", "make", "-c", tiny_yaml, "--out", str(out)],
        "train": ["train", "-c", tiny_yaml, "--out", str(out), "--set", f"data.root={tmp_path / 'no-data'}"],
    }[command]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2, res.output
    (line,) = error_lines(res.output)
    assert f"pid {holder.pid}" in line and "already running" in line
    assert not out.exists()


@pytest.mark.parametrize("command", ["data make", "train", "demo"])
def test_every_command_refuses_an_out_that_is_a_file_in_one_line(tmp_path: Path, command: str) -> None:
    out = tmp_path / "file"
    out.write_text("x")
    tiny_yaml = str(REPO / "configs" / "tiny.yaml")
    args = {
        "data make": ["data", "make", "-c", tiny_yaml, "--out", str(out)],
        "train": ["train", "-c", tiny_yaml, "--out", str(out)],
        "demo": ["demo", "--out", str(out), "--checkpoint", str(tmp_path / "missing.pt")],
    }[command]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2, res.output
    (line,) = error_lines(res.output)
    assert str(out) in line and "not a folder" in line


def test_no_space_and_raw_os_errors_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import typer

    import pipeline.preflight as preflight
    from pipeline.cli.app import guarded

    full = shutil.disk_usage(tmp_path)._replace(free=1 << 20)
    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda p: full)
    with pytest.raises(preflight.PreflightError, match=rf"--out {tmp_path}: no space left \(1 MiB free"):
        preflight.writable_folder(tmp_path, "--out")
    # The last line of defence: an OSError nothing checked for is one line naming the path, exit 2.
    with pytest.raises(typer.Exit) as stop:
        guarded(lambda: (tmp_path / "nowhere" / "x").write_text("x"))
    assert stop.value.exit_code == 2


def test_recovery_puts_the_old_dataset_back_when_the_new_one_is_not_complete(tmp_path: Path) -> None:
    from pipeline.io_utils import atomic_write_json

    final, staging = tmp_path / "ds", tmp_path / STAGING_DIR / "ds"
    old = tmp_path / STAGING_DIR / ".old-ds-0123abcd"
    old.mkdir(parents=True)
    (old / "_SUCCESS").write_text("{}")
    staging.mkdir()  # no _SUCCESS: not a dataset that passed its gates
    neighbour = tmp_path / STAGING_DIR / ".old-ds-2-0123abcd"  # another dataset's (named ds-2): not ours
    neighbour.mkdir()
    atomic_write_json(publishing_mod.publish_journal(final), {"final": "ds", "old": old.name, "new": "ds"})
    assert "old dataset is back" in str(publishing_mod.recover_publish(staging, final))
    assert (final / "_SUCCESS").is_file() and not old.exists()
    assert not publishing_mod.publish_journal(final).exists()
    assert publishing_mod.recover_publish(staging, final) is None  # nothing left to do
    assert neighbour.is_dir()


# --------------------------------------------------------------------------- status files (issue 30)


@pytest.mark.parametrize("verdict_passed", [False, True])
@pytest.mark.parametrize("killed_in", ["card", "_SUCCESS"])
def test_a_kill_while_writing_the_status_leaves_the_old_status_or_the_new(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, verdict_passed: bool, killed_in: str
) -> None:
    """A set rejected before is re-judged; whatever the verdict and wherever the kill, it never reads published early."""
    import manifests.writer as writer_mod
    from manifests.status import read_status

    root = tmp_path / "staging"
    rows = build_dataset(root)
    (root / "REJECTED").write_text('{"message": "rejected: before"}')
    assert read_status(root).state == "rejected"
    verdict = {"passed": verdict_passed, "failed_message": "" if verdict_passed else "kid", "gates": [], "report": None}
    # These rows fail class_balance, so a passing verdict's card carries no status (the audit would flag "published").
    meta = {**final_meta(rows), "status": None if verdict_passed else "rejected"}
    real_card, real_json = writer_mod.write_card, writer_mod.atomic_write_json

    def die(*args: object, **kwargs: object) -> None:
        raise Killed

    if killed_in == "card":
        monkeypatch.setattr(writer_mod, "write_card", die)
    else:
        monkeypatch.setattr(writer_mod, "atomic_write_json", die)  # finalize writes _SUCCESS with it, last
    with pytest.raises(Killed):
        publishing_mod.write_status(root, verdict, lambda: writer_mod.finalize(root, meta))
    assert read_status(root).state == "rejected"  # the old status (and the new one when rejected again)
    assert audit_dataset(root).status == "rejected"

    monkeypatch.setattr(writer_mod, "write_card", real_card)
    monkeypatch.setattr(writer_mod, "atomic_write_json", real_json)
    publishing_mod.write_status(root, verdict, lambda: writer_mod.finalize(root, meta))  # the rerun
    assert read_status(root).state == ("published" if verdict_passed else "rejected")
    assert audit_dataset(root).ok, audit_dataset(root).problems


def test_a_rerun_over_a_damaged_published_set_refuses_in_one_line_and_overwrite_repairs_it(
    tiny: Path, tmp_path: Path, sets: list[str]
) -> None:
    first = generate_dataset(None, tiny, tmp_path, overrides=sets, name="ds")
    final = first.dataset_dir
    assert first.published and audit_dataset(final).ok
    next((final / "images").rglob("*.png")).unlink()
    (final / "extra.txt").write_text("added by hand\n")

    res = CliRunner().invoke(app, ["generate", "--checkpoint", str(tiny), "--out", str(tmp_path), "--name", "ds",
                                   *cli_args(sets)])  # fmt: skip
    assert res.exit_code == 2, res.output
    (line,) = error_lines(res.output)
    assert "published dataset is damaged" in line and "missing_file" in line and "--overwrite" in line
    assert "already done" not in res.output

    repaired = generate_dataset(None, tiny, tmp_path, overrides=sets, name="ds", overwrite=True)
    # Only the shard that lost an image is rendered again; the others are the published files.
    assert repaired.published and repaired.shards_rendered == 1 < repaired.n_shards
    assert audit_dataset(final).ok and not (final / "extra.txt").exists()


def test_a_check_setting_change_rescores_staged_renders_without_touching_them(
    tiny: Path, tmp_path: Path, sets: list[str]
) -> None:
    strict = [*sets, "quality.kid_ceiling=1e-12"]  # rejected: the set stays in staging
    first = generate_dataset(None, tiny, tmp_path, overrides=strict, name="ds")
    assert first.status == "rejected"
    pngs = sorted((first.dataset_dir / "images").rglob("*.png"))
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in pngs}
    hashes = read_manifest(first.dataset_dir)[["sample_id", "sha256"]]

    again = generate_dataset(None, tiny, tmp_path, overrides=[*strict, "quality.ssim_floor=0.99"], name="ds")
    assert again.shards_rendered == 0
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in pngs} == before  # not one image rewritten
    rows = read_manifest(again.dataset_dir)
    assert rows[["sample_id", "sha256"]].equals(hashes)
    scored = rows["ssim_truth"].notna()
    assert scored.any() and not rows.loc[scored, "all_pass"].any()  # the new floor was applied
    assert audit_dataset(again.dataset_dir).ok

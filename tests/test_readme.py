"""The README cannot drift from the CLI: every command in it parses, and each one runs here in a cheap form.

The Install and Test blocks are run verbatim by `.ci/run`. Every other `fersynth` command of the
README runs below, in order, on the tiny recipe (paths mapped into a temporary folder, speed-only
settings appended), or is named in COVERED_ELSEWHERE with the test that runs it.
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import click
import numpy as np
import pytest
import typer
from conftest import REPO
from fast_settings import FAST_USEFULNESS
from typer.testing import CliRunner

import pipeline.generate.checks as checks_mod
from pipeline.cli import app

README = (REPO / "README.md").read_text(encoding="utf-8")

# README path -> the tiny recipe's equivalent (relative paths resolve in the test's working folder).
CHEAP_PATHS = {
    "configs/photo-sphere-64.yaml": str(REPO / "configs" / "tiny.yaml"),
    "configs/cpu-64.yaml": str(REPO / "configs" / "tiny.yaml"),
    "data/procedural-64": "data/tiny-16",
    "runs/cpu-64/": "runs/tiny/",
    "runs/photo-sphere-64/": "runs/tiny/",
    "checkpoints/photo-sphere-64.pt": "checkpoints/mine.pt",
    "datasets/demo": "datasets/mine",  # the demo runs elsewhere; the walkthrough's own dataset stands in
}
GENERATE_FAST = [
    "generate.fid_max_images=8",
    "generate.report_max_images=16",
    "quality.kid_subsets=10",
    "generate.n_novel=2",
    # the tiny GAN cannot pass real gates; these let the walkthrough reach audit, tstr and export
    "quality.embedder_identity_threshold=-1.0",
    "quality.ssim_floor=-1.0",
    "quality.kid_ceiling=100.0",
    "quality.pass_rate_floor=0.0",
    "quality.class_balance_tolerance=100.0",
    "quality.usefulness_floor=0.0",
    *FAST_USEFULNESS,
]
TSTR_FAST = [
    "tstr.steps=2",
    "tstr.batch_size=8",
    "tstr.image_size=16",
    "tstr.num_workers=0",
    "tstr.n_small_identities=2",
    "tstr.seeds=[0]",
    "tstr.recipes=[plain]",
]
EXTRA_ARGS = {
    "data import": ["--no-detect", "--size", "16", "--identity-regex", r"^(id\d+)_"],
    "generate": [a for s in GENERATE_FAST for a in ("--set", s)],
    "tstr": [a for s in TSTR_FAST for a in ("--set", s)],
}
COVERED_ELSEWHERE = {
    "demo": "tests/test_generate_cli.py::test_demo_makes_missing_data_and_publishes",
    "serve": "tests/test_serve.py (needs a Prefect API)",
}


def readme_commands() -> list[str]:
    """`fersynth ...` lines of the README's bash blocks, then inline `fersynth ...` spans without placeholders."""
    out: list[str] = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        for line in block.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip().removeprefix(".venv/bin/")
            if line.startswith("fersynth "):
                out.append(line)
    out += [
        c for c in re.findall(r"`(fersynth [^`]+)`", README) if not re.search(r"<|\b[A-Z]{2,}\b", c) and c not in out
    ]
    return out


def subcommand(args: list[str]) -> str:
    return " ".join(args[:2]) if args[0] == "data" else args[0]


def _parse(args: list[str]) -> None:
    cmd: click.Command = typer.main.get_command(app)
    ctx = cmd.make_context("fersynth", list(args), resilient_parsing=False)
    while isinstance(cmd, click.Group) and ctx.protected_args + ctx.args:
        rest = [*ctx.protected_args, *ctx.args]
        name, cmd, rest = cmd.resolve_command(ctx, rest)
        ctx = cmd.make_context(name, rest, parent=ctx, resilient_parsing=False)


def test_the_readme_shows_the_main_commands() -> None:
    names = {subcommand(shlex.split(c)[1:]) for c in readme_commands()}
    assert {"demo", "data make", "train", "evaluate", "export", "generate", "audit", "tstr", "weights"} <= names


@pytest.mark.parametrize("command", readme_commands())
def test_every_readme_command_parses(command: str) -> None:
    _parse(shlex.split(command)[1:])  # raises click.UsageError on an unknown command or option


def _cheap(command: str) -> list[str]:
    for old, new in CHEAP_PATHS.items():
        command = command.replace(old, new)
    args = shlex.split(command)[1:]
    return [*args, *EXTRA_ARGS.get(subcommand(args), [])]


def _photo_folder(data: Path, dest: Path) -> None:
    """A by-expression photo folder made from the tiny procedural images."""
    import pandas as pd

    labels = pd.read_parquet(data / "labels.parquet")
    for row in labels.groupby("expression").head(6).itertuples():
        target = dest / row.expression / f"{row.identity}_{Path(row.path).name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(data / row.path, target)


def test_readme_walkthrough_runs_on_the_tiny_recipe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fid_weights: Path
) -> None:
    def ideal(classifier, images, target_idx, threshold=0.5, batch_size=64, device="auto"):
        t = np.asarray(target_idx)
        return t, np.full(len(t), 0.9), np.ones(len(t), bool)

    monkeypatch.setattr(checks_mod, "expression_scores", ideal)  # the tiny GAN cannot pass on its own
    monkeypatch.chdir(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    ran = []
    for command in readme_commands():
        args = _cheap(command)
        if subcommand(args) in COVERED_ELSEWHERE:
            continue
        if args[:2] == ["data", "import"]:
            _photo_folder(tmp_path / "data" / "tiny-16", tmp_path / args[3])
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 0, f"{command}\n-> {args}\n{res.output}"
        ran.append(subcommand(args))
    assert {"data make", "data import", "train", "evaluate", "export", "generate", "audit", "tstr"} <= set(ran)

    snippet = re.search(r"```python\n(.*?)```", README, re.S)
    assert snippet is not None
    code = snippet.group(1)
    for old, new in CHEAP_PATHS.items():
        code = code.replace(old, new)
    exec(code, {})

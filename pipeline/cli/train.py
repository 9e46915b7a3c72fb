"""`fersynth train` and `fersynth evaluate`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pipeline.cli.app import ConfigOpt, SetOpt, app, console, guarded, load
from pipeline.cli.progress import PhaseProgress


@app.command()
def train(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    out: Annotated[Path | None, typer.Option(help="Run folder (overrides train.out_dir).")] = None,
    flow: Annotated[
        bool, typer.Option("--flow", help="Run as the Prefect flow `train` instead of in-process.")
    ] = False,
) -> None:
    """Train the decoupling GAN (resumes from the run folder's last checkpoint)."""
    from pipeline.preflight import writable_folder

    cfg = load(config, set_)
    if out is not None:
        cfg.train.out_dir = out
    guarded(lambda: writable_folder(cfg.train.out_dir, "--out" if out is not None else "train.out_dir"))
    if flow:
        from flows.train import train_flow

        result = guarded(
            lambda: train_flow(
                config=str(config) if config else None, overrides=list(set_ or []), out_dir=str(cfg.train.out_dir)
            )
        )
        console.print(f"flow finished: {json.dumps(result, indent=2)}")
        return
    from pipeline.train.run import run_training

    with PhaseProgress(("loss_g", "recon", "swap_acc", "expr_acc", "id_acc")) as bar:
        result = guarded(lambda: run_training(cfg, progress=lambda s: bar(s.phase, s.step, s.total, s.metrics)))
    console.print(f"[green]done[/] checkpoint: {result['checkpoint']}  report: {result['report']}")


@app.command()
def evaluate(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint written by `fersynth train`.")],
    set_: SetOpt = None,
    out: Annotated[
        Path | None, typer.Option(help="Folder for eval.json and the swap grid (default: beside the checkpoint).")
    ] = None,
    data: Annotated[
        Path | None, typer.Option(help="Labelled dataset to evaluate on (default: the training data).")
    ] = None,
    split: Annotated[str, typer.Option(help="Split whose identities are evaluated.")] = "test",
) -> None:
    """Ground-truth evaluation of identity x expression swaps on held-out identities."""
    from pipeline.evaluate import evaluate_checkpoint

    with PhaseProgress(("expr_acc", "id_acc")) as bar:
        result = guarded(
            lambda: evaluate_checkpoint(
                checkpoint, out_dir=out, data_root=data, split=split, overrides=list(set_ or []), progress=bar
            )
        )
    for k, v in result["metrics"].items():
        console.print(f"  {k}: {v:.4f}" if isinstance(v, float) else f"  {k}: {v}", highlight=False)
    for w in result.get("warnings", []):
        console.print(f"[yellow]warning:[/] {w}")
    console.print(f"leak table (source x target expression accuracy): {result['leak_table']['heatmap']}")
    console.print(f"report: {result['report']}")


@app.command()
def export(
    checkpoint: Annotated[Path, typer.Argument(help="A finished run's checkpoints/final.pt.")],
    out: Annotated[Path, typer.Argument(help="Where to write the render-only checkpoint.")],
    half: Annotated[bool, typer.Option(help="Store weights as float16 (half the size).")] = False,
    recalibrate: Annotated[
        bool, typer.Option(help="Recompute the gate thresholds on the real validation split (needs the data).")
    ] = False,
    judge_panel: Annotated[
        int | None,
        typer.Option(min=1, help="Expression judges gating each render: trains the missing ones, then recalibrates."),
    ] = None,
    set_: SetOpt = None,
) -> None:
    """Write a slim render-only checkpoint (no optimisers, discriminator or feedback network)."""
    from pipeline.io_utils import sha256_file
    from pipeline.train.export import export_release

    path = guarded(
        lambda: export_release(
            checkpoint, out, half=half, recalibrate=recalibrate, judge_panel=judge_panel, overrides=list(set_ or [])
        )
    )
    console.print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, sha256 {sha256_file(path)[:16]}…)")


@app.command("refit-codes")
def refit_codes_cmd(
    checkpoint: Annotated[Path, typer.Argument(help="A finished checkpoint (final.pt or a release).")],
    data: Annotated[Path | None, typer.Option(help="Its training data (default: the path in its config).")] = None,
) -> None:
    """Re-fit a checkpoint's target expression codes and identity distribution (rewrites it in place)."""
    from pipeline.core.codes import refit_codes

    codes = guarded(lambda: refit_codes(checkpoint, data))
    levels = ", ".join(f"{v:g}" for v in codes["exp_levels"].tolist())
    console.print(f"rewrote {checkpoint}: expression anchors at intensities {levels}")

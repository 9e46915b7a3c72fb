"""`fersynth data ...` commands (procedural dataset, adapters, cache)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from pipeline.cli.app import ConfigOpt, SetOpt, console, data_app, guarded, load


@data_app.command("make")
def make(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write the dataset into.")],
    config: ConfigOpt = None,
    set_: SetOpt = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace a different dataset already in --out.")
    ] = False,
    workers: Annotated[
        int | None, typer.Option("--workers", "-w", min=1, help="Render processes (default: all cores).")
    ] = None,
) -> None:
    """Render the procedural face dataset (settings under `procedural:` in the config)."""
    # Imported here so `fersynth --help` stays fast.
    from pipeline.preflight import writable_folder
    from pipeline.procedural.dataset import CONTACT_SHEET, make_dataset, summarize

    cfg = load(config, set_).procedural
    guarded(lambda: writable_folder(out, "--out"))
    start = time.perf_counter()
    labels = guarded(lambda: make_dataset(cfg, out, overwrite=overwrite, workers=workers, progress=True))
    elapsed = time.perf_counter() - start
    s = summarize(labels.parent)
    # soft_wrap on the summary lines: paths must stay copyable, not broken at the terminal width.
    console.print(
        f"[bold green]made[/] {s['images']} images of {s['identities']} identities at {s['resolution']} px in {elapsed:.1f} s",
        soft_wrap=True,
    )
    for split, n in s["per_split"].items():
        console.print(
            f"  {split:<6} {n:>7} images  {s['identities_per_split'][split]:>5} identities",
            highlight=False,
            soft_wrap=True,
        )
    console.print("  " + ", ".join(f"{e} {n}" for e, n in s["per_expression"].items()), highlight=False, soft_wrap=True)
    console.print(f"  labels: {labels}", highlight=False, soft_wrap=True)
    console.print(f"  contact sheet: {labels.parent / CONTACT_SHEET}", highlight=False, soft_wrap=True)

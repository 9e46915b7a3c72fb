"""`fersynth data import` (real-dataset adapters) and `fersynth data cache` (preprocessed tensors)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from pipeline.adapters import LAYOUTS, ImportOptions, ImportSummary, import_dataset
from pipeline.cli.app import console, data_app, echo_kv, guarded

_LAYOUT_HELP = "; ".join(f"{k}: {v.help}" for k, v in LAYOUTS.items())


def _print_summary(s: ImportSummary) -> None:
    table = Table(title=f"{s.n_images} images, {s.n_identities} identities -> {s.out}", show_lines=False)
    table.add_column("expression")
    for split in s.counts:
        table.add_column(split, justify="right")
    table.add_column("total", justify="right")
    for exp, total in s.class_counts.items():
        table.add_row(exp, *(str(s.counts[sp][exp]) for sp in s.counts), str(total))
    console.print(table)
    echo_kv(
        "import",
        {
            "layout": s.layout,
            "aligned with": s.aligned_with,
            "crop size": s.crop_size,
            "splits from": s.splits_from,
            "listed": s.n_listed,
            "skipped": {k: len(v) for k, v in s.skipped.items()} or 0,
            "dropped labels": s.dropped or 0,
            "unknown labels (dropped)": s.unknown or 0,
            "excluded": s.excluded or 0,
            "seconds": s.seconds,
        },
    )
    for w in s.warnings:
        console.print(f"[yellow]warning:[/] {w}", highlight=False)


@data_app.command("import")
def import_cmd(
    layout: Annotated[str, typer.Argument(help=f"Source layout. {_LAYOUT_HELP}")],
    src: Annotated[Path, typer.Argument(help="Dataset folder or label file.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output dataset folder.")],
    size: Annotated[int, typer.Option(help="Square crop size in pixels (power of two).")] = 64,
    val_fraction: Annotated[float, typer.Option(help="Fraction of identities for validation.")] = 0.1,
    test_fraction: Annotated[float, typer.Option(help="Fraction of identities for test.")] = 0.1,
    seed: Annotated[int, typer.Option(help="Seed of the identity split.")] = 0,
    no_detect: Annotated[bool, typer.Option("--no-detect", help="No face detection: centre square crop.")] = False,
    margin: Annotated[float, typer.Option(help="Crop margin as a fraction of the face box, each side.")] = 0.25,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a different dataset in --out.")] = False,
    drop_unknown: Annotated[
        bool, typer.Option("--drop-unknown", help="Skip and count unknown labels instead of failing.")
    ] = False,
    identity_regex: Annotated[
        str | None, typer.Option(help="Regex on file names giving the identity (group 'identity' or 1).")
    ] = None,
    path_col: Annotated[str | None, typer.Option(help="CSV column of image paths.")] = None,
    identity_col: Annotated[str | None, typer.Option(help="CSV column of identities.")] = None,
    expression_col: Annotated[str | None, typer.Option(help="CSV column of expression labels.")] = None,
    images: Annotated[Path | None, typer.Option(help="Folder the listed images are relative to.")] = None,
    device: Annotated[str, typer.Option(help="Device for MTCNN: auto, cpu or cuda.")] = "auto",
) -> None:
    """Import a real dataset: detect and align faces, write PNG crops, labels.parquet and import_report.json."""
    if layout not in LAYOUTS:
        console.print(f"[bold red]error:[/] unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
        raise typer.Exit(code=2)
    opts = ImportOptions(
        size=size,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
        detect=not no_detect,
        margin=margin,
        overwrite=overwrite,
        drop_unknown=drop_unknown,
        identity_regex=identity_regex,
        path_col=path_col,
        identity_col=identity_col,
        expression_col=expression_col,
        images_dir=images,
        device=device,
    )
    with Progress(
        TextColumn("[bold]importing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console
    ) as bar:
        task = bar.add_task("import", total=None)

        def tick(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        summary = guarded(lambda: import_dataset(layout, src, out, opts, progress=tick))
    _print_summary(summary)


@data_app.command("cache")
def cache_cmd(
    root: Annotated[Path, typer.Argument(help="Dataset folder holding labels.parquet.")],
    resolution: Annotated[int, typer.Option(help="Image size of the cached tensors.")] = 64,
    cache_dir: Annotated[Path | None, typer.Option(help="Cache folder (default <root>/.cache).")] = None,
) -> None:
    """Build or refresh the preprocessed tensor cache of a dataset."""
    from pipeline.cache import load_tensors_info

    images, _, info = guarded(lambda: load_tensors_info(root, resolution, cache_dir))
    echo_kv(
        "cache",
        {
            "file": info.path,
            "images": f"{info.n_images} x {tuple(images.shape[1:])} uint8",
            "status": f"rebuilt ({info.reason})" if info.rebuilt else "up to date",
            "key": info.key[:16],
        },
    )

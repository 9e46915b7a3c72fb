"""`fersynth tstr`, `fersynth serve` and `fersynth export-dataset`: using generated datasets downstream."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

import typer

from pipeline.cli.app import ConfigOpt, SetOpt, app, console, guarded, load


@app.command()
def tstr(
    synthetic: Annotated[Path | None, typer.Option(help="Generated dataset (omit to run only the real arms).")] = None,
    real: Annotated[
        Path | None,
        typer.Option(help="Real labelled dataset (labels.parquet) with train/test splits; not for --report-only."),
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    out: Annotated[Path | None, typer.Option(help="Report folder (overrides tstr.out_dir).")] = None,
    report_only: Annotated[
        bool, typer.Option("--report-only", help="Rebuild the report from the arms finished under the report folder.")
    ] = False,
    flow: Annotated[bool, typer.Option("--flow", help="Run as the Prefect flow `tstr` (artifacts).")] = False,
    allow_rejected: Annotated[
        bool, typer.Option("--allow-rejected", help="Use a rejected or unfinished generated dataset anyway.")
    ] = False,
) -> None:
    """Train on synthetic, test on real: a ResNet-18 per arm, recipe and seed, evaluated on real test images.

    Finished arms are kept under the report folder: rerunning the command resumes.
    """
    cfg = load(config, set_)
    out_dir = out or cfg.tstr.out_dir
    if not report_only:
        if real is None:
            console.print("[bold red]error:[/] --real is required (only --report-only runs without it)")
            raise typer.Exit(code=2)
        if synthetic is None:
            # Without a generated dataset only the real arms can run; say so instead of failing later.
            cfg.tstr.arms = [a for a in cfg.tstr.arms if "synthetic" not in a and "matched" not in a]
            if not cfg.tstr.arms:
                console.print("[bold red]error:[/] tstr.arms needs a generated dataset; pass --synthetic")
                raise typer.Exit(code=2)
    if synthetic is not None and not report_only:
        _warn_if_not_published(synthetic, allow_rejected, "tstr")  # before either path trains anything
    if flow and not report_only:
        from flows.tstr import tstr_flow
        from pipeline.config import config_to_dict

        result = tstr_flow(
            str(synthetic) if synthetic else None, str(real), out=str(out_dir), cfg_dict=config_to_dict(cfg)
        )
        console.print(json.dumps(result, indent=2))
        return
    from pipeline.tstr import run_tstr

    def progress(arm: str, step: int, total: int, loss: float) -> None:
        if step == total or step % max(1, total // 10) == 0:
            console.print(f"  {arm}: step {step}/{total} loss {loss:.4f}", highlight=False)

    result = guarded(
        lambda: run_tstr(synthetic, real or Path(), cfg.tstr, out_dir, progress, report_only, allow_rejected)
    )
    for row in result["summary"]:
        console.print(
            f"  {row['recipe']:<10} {row['arm']:<24} accuracy {row['accuracy_mean']:.3f} ± {row['accuracy_std']:.3f}"
            f"  macro F1 {row['macro_f1_mean']:.3f} ± {row['macro_f1_std']:.3f}  ({row['seeds']} seeds)",
            highlight=False,
        )
    for t in result["targets"]:
        console.print(f"  {t['line']}", highlight=False)
    files = result["files"]
    console.print(f"table: {files['markdown']}  plot: {files['plot']}  ({result['trained']} arms trained now)")


@app.command()
def serve(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    limit: Annotated[int | None, typer.Option(help="Most flow runs at once.")] = None,
) -> None:
    """Serve the scheduled `generate` deployment (schedule.cron) until interrupted; needs a Prefect API."""
    from flows.serve import schedule_of, serve_generate

    cfg = load(config, set_)
    guarded(lambda: schedule_of(cfg))  # fail fast, naming the field, before Prefect starts anything
    s = cfg.schedule
    console.print(f"serving {s.deployment_name}: cron '{s.cron}' ({s.timezone}), new versions under {s.out}")
    guarded(lambda: serve_generate(cfg, limit=limit))


@app.command("export-dataset")
def export_dataset(
    root: Annotated[Path, typer.Argument(help="A generated dataset folder.")],
    out: Annotated[Path, typer.Argument(help="New (or empty) folder to write.")],
    format_: Annotated[
        Literal["imagefolder", "hf"],
        typer.Option("--format", help="imagefolder: OUT/<label>_<expression>/; hf: + metadata"),
    ] = "imagefolder",
    where: Annotated[
        list[str] | None, typer.Option("--where", help="pandas query over manifest columns (repeatable).")
    ] = None,
    all_rows: Annotated[bool, typer.Option("--all", help="Include images that failed a per-image check.")] = False,
    link: Annotated[
        bool,
        typer.Option(
            "--link/--copy",
            help="Hard-link images instead of copying them (default: copy). Linked files ARE the dataset's files: "
            "editing one in the export edits the source dataset.",
        ),
    ] = False,
    allow_rejected: Annotated[
        bool, typer.Option("--allow-rejected", help="Export a rejected or unfinished dataset anyway.")
    ] = False,
) -> None:
    """Export a generated dataset (optionally filtered) as an ImageFolder tree or a `datasets` folder.

    Every image's sha256 is checked against the manifest on the way: a changed image stops the export.
    """
    from pipeline.downstream import export_hf, export_imagefolder

    _warn_if_not_published(root, allow_rejected, "export-dataset")
    if link:
        console.print(
            "[bold yellow]warning:[/] --link: the exported images are hard links to the dataset's own files; "
            f"editing one in {out} edits {root} too",
            highlight=False,
        )
    fn = export_hf if format_ == "hf" else export_imagefolder
    result = guarded(
        lambda: fn(
            root,
            out,
            filters=list(where or []) or None,
            require_pass=not all_rows,
            link=link,
            allow_rejected=allow_rejected,
        )
    )
    console.print(
        f"wrote {result['images']} images to {result['out']} ({result['link']} linked, {result['copy']} copied; "
        "every sha256 checked)",
        highlight=False,
    )


def _warn_if_not_published(root: Path, allow_rejected: bool, use: str) -> None:
    """Refuse (one line, exit 2) a rejected or unfinished generated dataset, or warn when it is allowed."""
    from manifests.status import require_published

    status = guarded(lambda: require_published(root, allow_rejected, use))
    if not status.published:
        console.print(f"[bold yellow]warning:[/] using a {status.state} dataset: {status.reason}", highlight=False)

"""`fersynth generate` and `fersynth demo`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from pipeline.cli.app import USER_ERRORS, ConfigOpt, SetOpt, app, console, fail, guarded, load, os_error_line
from pipeline.cli.progress import PhaseProgress, log_line, plain_output

DEMO_CHECKPOINT = Path("checkpoints/photo-sphere-64.pt")
# A few hundred images in a few minutes on 2 CPU cores: 7 expressions x 2 intensities x the train
# identities of the embedded dataset (capped), plus a handful of novel identities; FID on a capped set.
DEMO_SETTINGS = [
    "generate.intensities=[0.5, 1.0]",
    "generate.max_real_identities=16",
    "generate.identity_sources=[real, novel]",
    "generate.n_novel=8",
    "generate.shard_size=100",
    "generate.fid_max_images=128",
    "generate.report_max_images=400",
]


def _summary(result: Any) -> None:
    from rich.table import Table

    ok = result.published
    head = "[bold green]published[/]" if ok else "[bold red]REJECTED[/]"
    console.print(
        f"{head} {result.name}: {result.n_images} images in {result.n_shards} shard(s) "
        f"({result.shards_rendered} rendered, {result.shards_skipped} already done) in {result.seconds:.1f} s",
        soft_wrap=True,
    )
    table = Table("gate", "value", "op", "threshold", "verdict")
    for g in result.gates:
        v = g.get("value")
        verdict = ("pass" if g["passed"] else "FAIL") if g.get("enforced", True) else "info"
        t = g["threshold"]
        row = (g["name"], "not computed" if v is None else f"{v:.4g}", g["op"], "n/a" if t is None else f"{t:.4g}")
        if plain_output():  # a log: one timestamped line per gate
            log_line(f"gate {row[0]}: {row[1]} {row[2]} {row[3]}: {verdict}")
        table.add_row(*row, verdict)
    if not plain_output():
        console.print(table)
    if not ok:
        console.print(f"[red]failed:[/] {result.failed_message}", soft_wrap=True, highlight=False)
    where = [
        ("dataset", result.dataset_dir),
        ("card", result.card),
        ("report", result.report),
        ("grid", result.grid),
    ]
    for label, path in where:
        console.print(f"  {label:<8} {path}", highlight=False, soft_wrap=True)
    if not ok:
        console.print(
            "  kept in staging (never published); relax or fix and rerun the same command to re-judge "
            "without re-rendering",
            highlight=False,
        )


def _raised(state: Any) -> Exception | None:
    """The exception a failed Prefect flow run ended with."""
    try:
        state.result()
    except Exception as exc:  # the failure is the value wanted here
        return exc
    return None


def _run(
    checkpoint: Path,
    out: Path,
    config: Path | None,
    sets: list[str],
    name: str | None,
    overwrite: bool,
    flow: bool,
) -> Any:
    from pipeline.generate import generate_dataset
    from pipeline.generate.staging import preflight_generate

    guarded(lambda: preflight_generate(checkpoint, out))  # before the config, the checkpoint or the plan
    cfg = load(config, sets) if config is not None else None
    if flow:
        from flows.generate import run_generate_flow

        state = guarded(
            lambda: run_generate_flow(
                cfg, checkpoint, out, name=name, overwrite=overwrite, overrides=None if cfg else sets, return_state=True
            )
        )
        if state.is_failed():
            cause = _raised(state)
            if isinstance(cause, (*USER_ERRORS, OSError)):  # bad input or a held lock: the same line as without --flow
                fail(os_error_line(cause) if isinstance(cause, OSError) else str(cause))
            console.print(f"[bold red]flow run failed:[/] {state.message}", soft_wrap=True, highlight=False)
            raise typer.Exit(code=1)
        console.print(f"[green]flow run completed[/]: {state.result()}", soft_wrap=True, highlight=False)
        return None
    with PhaseProgress(("fid", "kid_mean", "ratio")) as bar:
        result = guarded(
            lambda: generate_dataset(
                cfg, checkpoint, out, name=name, overwrite=overwrite, overrides=None if cfg else sets, progress=bar
            )
        )
    _summary(result)
    if not result.published:
        raise typer.Exit(code=1)
    return result


@app.command()
def generate(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", "-k", help="A final or release checkpoint.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Parent folder: OUT/<name> (staging in OUT/.staging).")],
    config: ConfigOpt = None,
    set_: SetOpt = None,
    name: Annotated[
        str | None, typer.Option(help="Dataset folder name (default generate.name or from the plan).")
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace another dataset of the same name.")] = False,
    flow: Annotated[bool, typer.Option("--flow", help="Run as the Prefect flow `generate`.")] = False,
) -> None:
    """Render an identity x expression dataset, check every image, gate it, and publish it (or reject it).

    Without --config the checkpoint's own config is used; --set overrides single fields either way.
    Rerunning the same command resumes an interrupted run.
    """
    _run(checkpoint, out, config, list(set_ or []), name, overwrite, flow)


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Where the dataset goes.")] = Path("datasets"),
    checkpoint: Annotated[
        Path, typer.Option("--checkpoint", "-k", help="Checkpoint to render with.")
    ] = DEMO_CHECKPOINT,
    set_: SetOpt = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an earlier demo dataset.")] = False,
) -> None:
    """From nothing to a published dataset: make the training data if missing, then generate a small set."""
    from pipeline.core.trained import open_checkpoint
    from pipeline.preflight import writable_folder

    guarded(lambda: writable_folder(out, "--out"))  # before the training data is made
    if not checkpoint.is_file():
        console.print(
            f"[bold red]error:[/] checkpoint {checkpoint} not found; train one (`fersynth train -c configs/photo-sphere-64.yaml`) "
            "or pass --checkpoint",
            soft_wrap=True,
        )
        raise typer.Exit(code=2)
    from pipeline.core.legacy import checkpoint_config

    ckpt = guarded(lambda: open_checkpoint(checkpoint)).payload  # read once: generation reuses it
    sets = [*DEMO_SETTINGS, *(set_ or [])]
    cfg = guarded(lambda: checkpoint_config(ckpt, str(checkpoint), sets))
    root = Path(cfg.data.root)
    if not (root / "labels.parquet").is_file():
        from pipeline.procedural.dataset import make_dataset

        console.print(f"making the procedural dataset the checkpoint was trained on: {root}", highlight=False)
        t0 = time.perf_counter()
        guarded(lambda: make_dataset(cfg.procedural, root, progress=True))
        console.print(f"  done in {time.perf_counter() - t0:.1f} s", highlight=False)
    result = _run(checkpoint, out, None, sets, cfg.generate.name or "demo", overwrite, flow=False)
    if result is not None:
        console.print(
            f"[bold]next:[/] open {result.card} (dataset card), {result.report} (quality report) and "
            f"{result.grid} (sample grid); read rows with pandas: pd.read_parquet('{result.dataset_dir}/manifest')",
            soft_wrap=True,
            highlight=False,
        )

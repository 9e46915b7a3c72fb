"""`fersynth audit DIR`: check a generated dataset from its files alone."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from pipeline.audit import AuditResult, audit_dataset
from pipeline.cli.app import app, fail, guarded

# The summary is the command's output, so it goes to stdout (errors stay on the shared stderr console).
out = Console(highlight=False)


@app.command("audit")
def audit(
    root: Annotated[Path, typer.Argument(help="Dataset folder (holds manifest/part-*.parquet and the card).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")] = False,
    no_hashes: Annotated[
        bool, typer.Option("--no-hashes", help="Skip hashing images (existence still checked).")
    ] = False,
) -> None:
    """Audit a generated dataset: schema, files and hashes, paths, card, status, lineage. Exit 1 on problems."""
    if not root.exists():  # a mistyped path is bad input, not a dataset with problems
        fail(f"{root}: no such folder")
    result = guarded(lambda: audit_dataset(root, check_hashes=not no_hashes))
    if as_json:
        sys.stdout.write(json.dumps(result.to_dict(), indent=2, sort_keys=True, default=str) + "\n")
    else:
        _print_summary(result)
    if not result.ok:
        raise typer.Exit(code=1)


def _print_summary(result: AuditResult) -> None:
    s = result.stats
    out.print(f"[bold]fersynth audit[/] {result.root}")
    if "n_rows" in s:
        hashes = "checked" if s.get("hashes_checked") else "not checked (--no-hashes)"
        out.print(
            f"  {s['n_rows']} images in {s['n_shards']} shard(s), {s.get('n_identities', 0)} identities; hashes {hashes}"
        )
    counts = s.get("counts", {}).get("expression")
    if counts:
        out.print("  per expression: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    for k, v in s.get("checks", {}).items():
        out.print(f"  {k}: {v}")
    if result.lineage:
        table = Table(title="lineage", show_header=False)
        for k, v in result.lineage.items():
            table.add_row(k, json.dumps(v, sort_keys=True, default=str) if isinstance(v, dict | list) else str(v))
        out.print(table)
    if s.get("not_covered"):
        out.print("  not covered by any recorded hash: " + ", ".join(s["not_covered"]))
    if result.status and result.status != "published":
        # The files may be sound, but nobody should take this set for a published one.
        out.print(f"[bold yellow]status: {result.status.upper()}[/]: {result.status_reason}")
    if result.ok:
        out.print(f"[bold green]OK[/]: no problems found (status: {result.status})")
        return
    table = Table(title=f"{len(result.problems)} problem(s)")
    for col in ("code", "message", "path", "sample"):
        table.add_column(col, overflow="fold")
    for p in result.problems:
        table.add_row(p.code, p.message, p.path or "", p.sample or "")
    out.print(table)
    out.print(f"[bold red]FAILED[/]: {len(result.problems)} problem(s)")

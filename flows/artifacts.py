"""Prefect artifacts for offline use: tables and PNGs embedded in Markdown (no URL needed)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from prefect.artifacts import create_markdown_artifact, create_table_artifact


def _key(text: str) -> str:
    # Artifact keys: lowercase letters, digits and dashes only.
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


def table(key: str, rows: list[dict[str, Any]], description: str) -> None:
    clean = [{k: (round(v, 5) if isinstance(v, float) else v) for k, v in r.items()} for r in rows]
    create_table_artifact(key=_key(key), table=clean, description=description)


def png(key: str, path: Path, title: str) -> None:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    create_markdown_artifact(
        key=_key(key), markdown=f"### {title}\n\n![{title}](data:image/png;base64,{data})\n", description=title
    )


def markdown_file(key: str, path: Path, description: str) -> None:
    create_markdown_artifact(key=_key(key), markdown=Path(path).read_text(encoding="utf-8"), description=description)

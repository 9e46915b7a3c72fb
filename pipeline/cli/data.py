"""`fersynth data ...` commands (procedural dataset, adapters, cache)."""

from __future__ import annotations

from pipeline.cli.app import data_app  # noqa: F401

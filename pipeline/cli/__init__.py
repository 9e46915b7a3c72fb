"""`fersynth` command line. Each module registers its commands on the shared app.

Commands import the pipeline inside their bodies: `fersynth --help`, a mistyped option or a bad
path answers without loading torch or Prefect."""

from pipeline.cli import (  # noqa: F401  (registers commands)
    audit,
    config_cmd,
    data,
    data_import,
    downstream,
    generate,
    train,
    weights_cmd,
)
from pipeline.cli.app import app

__all__ = ["app"]

"""`fersynth` command line. Each module registers its commands on the shared app."""

from pipeline.cli import config_cmd, data  # noqa: F401  (registers commands)
from pipeline.cli.app import app

__all__ = ["app"]

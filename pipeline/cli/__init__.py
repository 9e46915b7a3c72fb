"""`fersynth` command line. Each module registers its commands on the shared app."""

from pipeline.cli import audit, config_cmd, data, data_import, downstream, generate, train  # noqa: F401  (registers commands)
from pipeline.cli.app import app

__all__ = ["app"]

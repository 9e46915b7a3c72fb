"""`fersynth config show`: print the resolved configuration."""

from __future__ import annotations

import yaml

from pipeline.cli.app import ConfigOpt, SetOpt, app, load
from pipeline.config import config_to_dict


@app.command("config")
def show_config(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Print the fully resolved configuration (defaults + file + overrides) as YAML."""
    cfg = load(config, set_)
    print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))

"""The one reader of stored configs: checkpoints and dataset plans of every version we published.

Like stylegan2-ada's `legacy.py`: a checkpoint or plan keeps the config of its day, which may name
options since retired (`pipeline.config.RETIRED_FIELDS`). They are dropped here, with a logged note
naming them, so today's strict `Config` reads the rest. A retired option that was switched on cannot be
honoured: for the network shape (rendering) or for a resumed run (training) that is a CheckpointError.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from pipeline.config import RETIRED_FIELDS, Config, load_config, to_overrides
from pipeline.core.checkpoint import CheckpointError

log = logging.getLogger(__name__)

# Retired options that change the networks' shape: a checkpoint trained with one on cannot be rebuilt.
SHAPE_FIELDS = ("model.id_spatial_channels", "model.skip_features")

# Where a refusal should say more: the last commit whose code still builds the option (check it out to
# render or resume such a checkpoint).
RETIRED_NOTES: dict[str, str] = {
    "model.skip_features": "skip-fed generators are no longer supported; the last commit that builds them is e193d4e",
}


def _retired_note(dotted: str, value: Any) -> str:
    """``name=value (see page)``, with the option's note where it has one."""
    note = f"; {RETIRED_NOTES[dotted]}" if dotted in RETIRED_NOTES else ""
    return f"{dotted}={value!r} (see {RETIRED_FIELDS[dotted][1]}{note})"


def drop_retired(raw: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(a copy of `raw` without retired fields, {dotted name: stored value} of those it held)."""
    clean = json.loads(json.dumps(raw))
    dropped: dict[str, Any] = {}
    for dotted in RETIRED_FIELDS:
        *parents, leaf = dotted.split(".")
        node = clean
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf in node:
            dropped[dotted] = node.pop(leaf)
    return clean, dropped


def switched_on(dropped: dict[str, Any]) -> dict[str, Any]:
    """The dropped fields whose stored value is not the retired option's "off" value (None: no such value)."""
    return {k: v for k, v in dropped.items() if RETIRED_FIELDS[k][0] is not None and v != RETIRED_FIELDS[k][0]}


def stored_config(
    raw: dict[str, Any] | str, source: str, overrides: list[str] | None = None, resume: bool = False
) -> Config:
    """Today's Config of a stored config (a dict, or the JSON string a checkpoint holds), plus `overrides`.

    `resume`: the config will continue training, so no retired option may have been on.
    """
    clean, dropped = drop_retired(json.loads(raw) if isinstance(raw, str) else raw)
    if dropped:
        log.info("%s: dropped retired config fields %s", source, ", ".join(sorted(dropped)))
    active = switched_on(dropped)
    blocking = {k: v for k, v in active.items() if resume or k in SHAPE_FIELDS}
    if blocking:
        names = "; ".join(_retired_note(k, v) for k, v in sorted(blocking.items()))
        doing = "resumed" if resume else "rebuilt"
        raise CheckpointError(
            f"{source}: trained with retired options, so it cannot be {doing} by this version: {names}"
        )
    if overrides:
        return load_config(None, [*to_overrides(clean), *overrides])
    return Config.model_validate(clean)


def checkpoint_config(
    ckpt: dict[str, Any], source: str, overrides: list[str] | None = None, resume: bool = False
) -> Config:
    """The Config a loaded checkpoint was trained with (see `stored_config`)."""
    return stored_config(ckpt["config"], source, overrides, resume)

"""`fersynth weights`: where each pretrained weight comes from, or every place looked for it."""

from __future__ import annotations

from rich.console import Console

from pipeline.cli.app import ConfigOpt, SetOpt, app, load
from pipeline.weights import WEIGHTS, WEIGHTS_DIR_ENV, WeightsNotFound, find_weight, sha256_of, user_cache_dir


@app.command("weights")
def weights(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """List each pretrained weight: where it was found and its sha256, or every place looked."""
    q = load(config, set_).quality
    explicit = {"facenet": q.facenet_weights, "fid": q.fid_weights}
    say = Console(soft_wrap=True, highlight=False).print
    say(f"lookup order: setting, environment variable, ${WEIGHTS_DIR_ENV}, {user_cache_dir()}, download (online only)")
    for key, spec in WEIGHTS.items():
        say(f"[bold]{spec.title}[/] ({spec.filename}), for {spec.needed_for}")
        try:
            look = find_weight(key, explicit[key])
        except WeightsNotFound as exc:
            say(f"  [red]error:[/] {exc}")
            continue
        if look.path is None:
            say(
                f"  [yellow]not found locally[/]; looked in: {'; '.join(look.tried)}; will try the download (online only)"
            )
            continue
        digest = sha256_of(look.path)
        say(f"  found: {look.path} ({look.source})")
        say(f"  sha256: {digest} ({'the published file' if digest == spec.sha256 else 'not the published file'})")

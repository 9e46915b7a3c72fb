"""Where the pretrained weights come from: one lookup for the product, the tests and the benchmarks.

Order, first hit wins: the explicit setting (`quality.<field>`), the weight's own environment
variable, `$FERSYNTH_WEIGHTS_DIR/<file>`, the user cache folder (`$XDG_CACHE_HOME/fersynth/weights`,
else `~/.cache/fersynth/weights`), and last the library's own download (facenet-pytorch's
`pretrained='vggface2'`, torchmetrics' FID Inception), which works only online.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

WEIGHTS_DIR_ENV = "FERSYNTH_WEIGHTS_DIR"
DOCS = "docs/weights.md"


class WeightsNotFound(FileNotFoundError):
    """A pretrained weight is in none of the places looked; the message lists them all."""


@dataclass(frozen=True)
class WeightSpec:
    key: str
    title: str
    filename: str
    env: str
    setting: str
    sha256: str
    needed_for: str


WEIGHTS: dict[str, WeightSpec] = {
    "facenet": WeightSpec(
        key="facenet",
        title="FaceNet InceptionResnetV1 (VGGFace2)",
        filename="facenet_inception_resnet_v1_vggface2.pt",
        env="FERSYNTH_FACENET_WEIGHTS",
        setting="quality.facenet_weights",
        sha256="7ae361719e448461f26de44dcfeef4a795a81f9709eeca6e61bd249084a44702",
        needed_for="identity checks of photo datasets",
    ),
    "fid": WeightSpec(
        key="fid",
        title="FID Inception-v3 (TorchScript)",
        filename="fid_inception_v3_torchscript.pt",
        env="FERSYNTH_FID_WEIGHTS",
        setting="quality.fid_weights",
        sha256="7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34",
        needed_for="FID/KID gates of every generated dataset",
    ),
}


def user_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "fersynth" / "weights"


@dataclass
class Lookup:
    """Where one weight was found (`path`, `source`), or every place looked (`tried`)."""

    spec: WeightSpec
    path: Path | None = None
    source: str = ""
    tried: list[str] = field(default_factory=list)

    @property
    def found(self) -> bool:
        return self.path is not None

    def missing_message(self, download_error: str | None = None) -> str:
        tried = list(self.tried)
        if download_error:
            tried.append(f"download ({download_error})")
        return (
            f"{self.spec.title} weights ({self.spec.filename}) not found, needed for {self.spec.needed_for}; "
            f"looked in: {'; '.join(tried)}. Put the file in {user_cache_dir()} or set {WEIGHTS_DIR_ENV} to its "
            f"folder (see {DOCS})"
        )


def find_weight(key: str, explicit: Path | str | None = None) -> Lookup:
    """The local file for weight `key`, following the documented order; never downloads."""
    spec = WEIGHTS[key]
    look = Lookup(spec)
    candidates: list[tuple[str, Path | None, str]] = [
        (spec.setting, Path(explicit).expanduser() if explicit else None, "not set"),
        (f"${spec.env}", Path(os.environ[spec.env]).expanduser() if os.environ.get(spec.env) else None, "not set"),
    ]
    wdir = os.environ.get(WEIGHTS_DIR_ENV)
    candidates.append((f"${WEIGHTS_DIR_ENV}", Path(wdir).expanduser() / spec.filename if wdir else None, "not set"))
    candidates.append(("user cache", user_cache_dir() / spec.filename, ""))
    for label, path, unset in candidates:
        if path is None:
            look.tried.append(f"{label} ({unset})")
            continue
        if path.is_file():
            look.path, look.source = path, label
            return look
        # An explicit setting that points nowhere is an error, not a reason to look elsewhere.
        if label in (spec.setting, f"${spec.env}"):
            raise WeightsNotFound(f"{label} = {path}: file not found ({spec.title}, {spec.filename}; see {DOCS})")
        look.tried.append(f"{label} {path} (absent)")
    return look


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()

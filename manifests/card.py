"""The dataset card: dataset_card.json (machine-readable), README.md (HF-style) and croissant.json.

The statistics in the card are computed by `compute_stats` from the manifest rows, and the audit
recomputes them with the same function, so a card that was edited, or a manifest that changed after
the card was written, shows up as a disagreement.

`dataset_meta` keys the card understands (all optional): name, description, license, run_id,
status, gates (list of {name, value, threshold, op, passed}), metrics (e.g. fid, kid, fid_per_expression),
thresholds, checkpoint ({sha256, step, path}), training_data (hashes), splits, config, code_version,
packages (overrides the versions detected here).
"""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import yaml

from manifests.layout import CARD_JSON, CARD_MD, CROISSANT, IMAGEFOLDER_METADATA, REPORT_DIR, list_shards
from manifests.schema import MANIFEST_DIR, MANIFEST_FIELDS, MANIFEST_SCHEMA_VERSION, label_order
from pipeline.expressions import EXPRESSIONS
from pipeline.io_utils import atomic_write_json, atomic_write_text, sha256_file

CARD_VERSION = 1
LINEAGE_PACKAGES = ("fersynth", "torch", "torchvision", "pyarrow", "pandas", "numpy", "prefect", "facenet-pytorch")
DEFAULT_LICENSE = "other"
ROUND = 6  # decimals kept for rates/means: stable JSON, and the audit compares at this precision


def package_versions(names: tuple[str, ...] = LINEAGE_PACKAGES) -> dict[str, str | None]:
    """Installed versions (None when a package is absent: the card must still be written)."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            out[name] = None
    return out


def _rate(s: pd.Series) -> float | None:
    s = s.dropna()
    return round(float(s.astype(bool).mean()), ROUND) if len(s) else None


def _mean(s: pd.Series) -> float | None:
    s = s.dropna()
    return round(float(s.astype("float64").mean()), ROUND) if len(s) else None


def compute_stats(df: pd.DataFrame) -> dict[str, Any]:
    """Counts and per-image check statistics of manifest rows (what the card states and the audit rechecks)."""
    by_expr = df.groupby("expression")
    return {
        "n_images": len(df),
        "n_identities": int(df["identity_id"].nunique()),
        "counts": {
            # All seven always listed: a class with zero images is a fact worth showing.
            "expression": {e: int((df["expression"] == e).sum()) for e in EXPRESSIONS},
            "identity_source": {str(k): int(v) for k, v in df["identity_source"].value_counts().sort_index().items()},
            "expression_by_source": {
                str(src): {e: int((g["expression"] == e).sum()) for e in EXPRESSIONS}
                for src, g in df.groupby("identity_source")
            },
        },
        "checks": {
            "all_pass_rate": _rate(df["all_pass"]),
            "expression_pass_rate": _rate(df["expression_pass"]),
            "identity_pass_rate": _rate(df["identity_pass"]),
            "face_found_rate": _rate(df["face_found"]),
            "n_identity_scored": int(df["identity_score"].notna().sum()),
            "n_ssim_truth": int(df["ssim_truth"].notna().sum()),
            "mean_identity_score": _mean(df["identity_score"]),
            "mean_expression_p_target": _mean(df["expression_p_target"]),
            "mean_ssim_truth": _mean(df["ssim_truth"]),
        },
        "per_expression": {
            str(e): {
                "n": len(g),
                "all_pass_rate": _rate(g["all_pass"]),
                "expression_pass_rate": _rate(g["expression_pass"]),
                "mean_expression_p_target": _mean(g["expression_p_target"]),
            }
            for e, g in by_expr
        },
    }


def size_category(n: int) -> str:
    """Hugging Face `size_categories` bucket."""
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return label
    return "1M<n<10M" if n < 10_000_000 else "n>10M"


def build_lineage(df: pd.DataFrame, dataset_meta: dict[str, Any]) -> dict[str, Any]:
    ckpt = dict(dataset_meta.get("checkpoint") or {})
    # The rows are the ground truth of what was rendered; the meta may only add a path.
    ckpt.setdefault("sha256", sorted(df["checkpoint_sha256"].unique().tolist()))
    ckpt.setdefault("step", sorted(int(s) for s in df["checkpoint_step"].unique()))
    packages = dataset_meta.get("packages") or package_versions()
    return {
        "run_id": dataset_meta.get("run_id") or sorted(df["run_id"].unique().tolist()),
        "checkpoint": ckpt,
        "training_data": dataset_meta.get("training_data", {}),
        "splits": dataset_meta.get("splits", {}),
        "config": dataset_meta.get("config", {}),
        "code_version": dataset_meta.get("code_version") or packages.get("fersynth"),
        "packages": packages,
    }


def build_card(df: pd.DataFrame, dataset_meta: dict[str, Any]) -> dict[str, Any]:
    gates = list(dataset_meta.get("gates") or [])
    return {
        "card_version": CARD_VERSION,
        "schema_version": MANIFEST_SCHEMA_VERSION,
        "name": dataset_meta.get("name", "fersynth synthetic facial expressions"),
        "license": dataset_meta.get("license", DEFAULT_LICENSE),
        "status": dataset_meta.get("status"),
        "gates_passed": all(bool(g.get("passed")) for g in gates) if gates else None,
        "stats": compute_stats(df),
        "gates": gates,
        "metrics": dataset_meta.get("metrics", {}),
        "thresholds": dataset_meta.get("thresholds", {}),
        "lineage": build_lineage(df, dataset_meta),
        "files": {"manifest": f"{MANIFEST_DIR}/part-*.parquet", "imagefolder_metadata": IMAGEFOLDER_METADATA},
        # The one label order of every route (manifest, metadata.parquet's `label`, ManifestDataset, both
        # exports): label i is names[i].
        "labels": {"column": "expression_index", "names": label_order(dataset_meta)},
    }


def write_card(root: Path, df: pd.DataFrame, dataset_meta: dict[str, Any]) -> tuple[Path, Path]:
    """Write dataset_card.json, README.md and croissant.json atomically; returns (json_path, md_path)."""
    root = Path(root)
    card = build_card(df, dataset_meta)
    json_path, md_path = root / CARD_JSON, root / CARD_MD
    atomic_write_json(json_path, card)
    atomic_write_text(md_path, render_markdown(card, dataset_meta))
    atomic_write_json(root / CROISSANT, croissant(root, card, dataset_meta, df["file_name"].tolist()))
    return json_path, md_path


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict | list):
        return f"`{json.dumps(v, sort_keys=True, default=str)}`"
    return str(v)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


_SHOWN_AS_PICTURES = ("usefulness_confusion_synthetic", "usefulness_confusion_real")
USEFULNESS_PICTURE = f"{REPORT_DIR}/usefulness_confusion.png"


def _gate_row(g: dict[str, Any]) -> list[Any]:
    value = "not computed" if g.get("value") is None else g.get("value")
    return [g.get("name"), value, g.get("op"), g.get("threshold"), g.get("passed"), g.get("note") or ""]


def _usefulness_section(metrics: dict[str, Any]) -> list[str]:
    """What a recogniser trained on this set does on real faces, beside one trained on real images."""
    if metrics.get("usefulness_accuracy_synthetic") is None:
        return []
    m = metrics
    ratios = m.get("usefulness_ratios") or [m["usefulness_ratio"]]
    spread = "" if len(ratios) < 2 else f"; per recogniser {', '.join(f'{r:.3f}' for r in ratios)}"
    return [
        "## What the renders teach a recogniser",
        f"A small recogniser trained on {m['usefulness_n_train']} passing renders recognises "
        f"{m['usefulness_accuracy_synthetic']:.3f} of {m['usefulness_n_eval']} real `{m['usefulness_eval_split']}` "
        f"faces; the same recipe trained on as many real images, {m['usefulness_accuracy_real']:.3f} "
        f"(chance {m['usefulness_chance']:.3f}; ratio {m['usefulness_ratio']:.3f}{spread}). "
        f"Figures are means over {len(ratios)} independently seeded recogniser(s); the matrices pool them.",
        f"![confusion matrices]({USEFULNESS_PICTURE})",
    ]


def render_markdown(card: dict[str, Any], dataset_meta: dict[str, Any]) -> str:
    stats, lineage = card["stats"], card["lineage"]
    front = {
        "license": card["license"],
        "pretty_name": card["name"],
        "task_categories": ["image-classification"],
        "tags": ["synthetic", "facial-expression", "fersynth"],
        "size_categories": [size_category(stats["n_images"])],
    }
    status = (
        card["status"]
        or {True: "all gates passed", False: "gates FAILED", None: "no gates recorded"}[card["gates_passed"]]
    )
    sources = list(stats["counts"]["expression_by_source"])
    count_rows = [
        [e, *(stats["counts"]["expression_by_source"][s][e] for s in sources), stats["counts"]["expression"][e]]
        for e in EXPRESSIONS
    ]
    parts = [
        "---\n" + yaml.safe_dump(front, sort_keys=False) + "---",
        f"# {card['name']}",
        dataset_meta.get("description", "Synthetic facial-expression images rendered by fersynth's decoupling GAN."),
        f"**{stats['n_images']}** images of **{stats['n_identities']}** identities. Status: **{status}**.",
        "## Loading",
        "```python\nimport pandas as pd\ndf = pd.read_parquet('manifest')  # manifest, one row per image\n"
        "import datasets\n"
        "ds = datasets.load_dataset('imagefolder', data_dir='.', split='train')  # images + metadata.parquet\n"
        "ds.features['label'].names  # a ClassLabel in the order below\n```\n"
        "DuckDB: `SELECT * FROM read_parquet('manifest/*.parquet')`. Audit: `fersynth audit .`",
        "## Labels",
        "Every route numbers the expressions the same way: `expression_index` in the manifest, `label` in "
        "`metadata.parquet` (a `ClassLabel` with these names under `load_dataset('imagefolder')`), the label of "
        "`ManifestDataset`, the `<label>_<expression>` class folders of both exports (`fersynth export-dataset`; "
        "torchvision's `ImageFolder` and Keras number them in this order) and the `hf` export's `label`, and "
        "the `expression_index` field of croissant.json (its `expressions` record set names them):\n\n"
        + _table(
            ["label", "expression"], [[i, e] for i, e in enumerate(card.get("labels", {}).get("names", EXPRESSIONS))]
        ),
        "## Images per expression and identity source",
        _table(["expression", *sources, "total"], count_rows),
        "## Per-image checks",
        _table(["statistic", "value"], [[k, v] for k, v in stats["checks"].items()]),
        "## Quality gates",
        _table(["gate", "value", "op", "threshold", "passed", "note"], [_gate_row(g) for g in card["gates"]])
        if card["gates"]
        else "No gates recorded.",
        *_usefulness_section(card["metrics"]),
        "## Metrics",
        _table(["metric", "value"], [[k, v] for k, v in card["metrics"].items() if k not in _SHOWN_AS_PICTURES])
        if card["metrics"]
        else "None recorded.",
        "## Thresholds",
        _table(["threshold", "value"], [[k, v] for k, v in card["thresholds"].items()])
        if card["thresholds"]
        else "None recorded.",
        "## Lineage",
        _table(
            ["item", "value"],
            [[k, v] for k, v in lineage.items() if k != "packages"]
            + [[f"package {k}", v] for k, v in lineage["packages"].items()],
        ),
        "## Manifest columns",
        _table(
            ["column", "type", "nullable", "doc"],
            [[f.name, str(f.type), f.nullable, (f.metadata or {}).get(b"doc", b"").decode()] for f in MANIFEST_FIELDS],
        ),
    ]
    return "\n\n".join(parts) + "\n"


_CROISSANT_TYPES = {pa.string(): "sc:Text", pa.bool_(): "sc:Boolean"}


def _croissant_type(t: pa.DataType) -> str:
    if pa.types.is_integer(t):
        return "sc:Integer"
    if pa.types.is_floating(t):
        return "sc:Float"
    return _CROISSANT_TYPES.get(t, "sc:Text")


# The standard Croissant 1.1 @context (mlcroissant warns on any other), plus the RAI and PROV prefixes.
CROISSANT_CONTEXT: dict[str, Any] = {
    "@language": "en",
    "@vocab": "https://schema.org/",
    "arrayShape": "cr:arrayShape",
    "citeAs": "cr:citeAs",
    "column": "cr:column",
    "conformsTo": "dct:conformsTo",
    "containedIn": "cr:containedIn",
    "cr": "http://mlcommons.org/croissant/",
    "rai": "http://mlcommons.org/croissant/RAI/",
    "prov": "http://www.w3.org/ns/prov#",
    "data": {"@id": "cr:data", "@type": "@json"},
    "dataType": {"@id": "cr:dataType", "@type": "@vocab"},
    "dct": "http://purl.org/dc/terms/",
    "description": {"@container": "@language"},
    "equivalentProperty": "cr:equivalentProperty",
    "examples": {"@id": "cr:examples", "@type": "@json"},
    "extract": "cr:extract",
    "field": "cr:field",
    "fileProperty": "cr:fileProperty",
    "fileObject": "cr:fileObject",
    "fileSet": "cr:fileSet",
    "format": "cr:format",
    "includes": "cr:includes",
    "isArray": "cr:isArray",
    "isLiveDataset": "cr:isLiveDataset",
    "jsonPath": "cr:jsonPath",
    "key": "cr:key",
    "md5": "cr:md5",
    "name": {"@container": "@language"},
    "parentField": "cr:parentField",
    "path": "cr:path",
    "recordSet": "cr:recordSet",
    "references": "cr:references",
    "regex": "cr:regex",
    "repeated": "cr:repeated",
    "replace": "cr:replace",
    "samplingRate": "cr:samplingRate",
    "sc": "https://schema.org/",
    "separator": "cr:separator",
    "source": "cr:source",
    "subField": "cr:subField",
    "transform": "cr:transform",
}


def _image_globs(file_names: list[str]) -> list[str]:
    """Globs matching the renders only: one per top folder of `file_name` (never the report's PNGs)."""
    tops = sorted({n.split("/", 1)[0] for n in file_names if "/" in n})
    loose = sorted({n for n in file_names if "/" not in n})
    return [f"{t}/**/*.png" for t in tops] + loose


def _relative_paths(value: Any, root: Path) -> Any:
    """`value` with every absolute path string made relative to the dataset folder (posix)."""
    if isinstance(value, dict):
        return {k: _relative_paths(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [_relative_paths(v, root) for v in value]
    if isinstance(value, str) and value.startswith("/"):
        return Path(os.path.relpath(value, Path(root).resolve())).as_posix()
    return value


def _semver(name: str) -> str:
    """Croissant wants MAJOR.MINOR.PATCH; a dataset version is its folder name, kept as build metadata."""
    build = re.sub(r"[^0-9A-Za-z-]+", "-", name).strip("-")
    return f"1.0.0+{build}" if build else "1.0.0"


LABELS_RECORD_SET = "expressions"


def _labels_record_set(names: list[str]) -> dict[str, Any]:
    """The label order as a Croissant enumeration: label i is names[i] on every route."""
    rs = LABELS_RECORD_SET
    return {
        "@type": "cr:RecordSet",
        "@id": rs,
        "name": rs,
        "description": "the label order: `expression_index` in the manifest, `label` in metadata.parquet, "
        "ManifestDataset and both exports",
        "dataType": "sc:Enumeration",
        "key": {"@id": f"{rs}/label"},
        "field": [
            {"@type": "cr:Field", "@id": f"{rs}/label", "name": "label", "dataType": "sc:Integer"},
            {"@type": "cr:Field", "@id": f"{rs}/name", "name": "name", "dataType": "sc:Text"},
        ],
        "data": [{f"{rs}/label": i, f"{rs}/name": e} for i, e in enumerate(names)],
    }


def croissant(
    root: Path, card: dict[str, Any], dataset_meta: dict[str, Any], file_names: list[str] | None = None
) -> dict[str, Any]:
    """Croissant 1.1 JSON-LD: a FileObject (sha256) per manifest shard, the renders as a FileSet
    (their hashes are in the manifest), one RecordSet joining each render (an `image` field) to its
    manifest row, and RAI/PROV notes whose paths are relative to the dataset folder."""
    shards = [p for _, _, p in list_shards(root)]
    distribution: list[dict[str, Any]] = [
        {
            "@type": "cr:FileObject",
            "@id": p.name,
            "name": p.name,
            "contentUrl": f"{MANIFEST_DIR}/{p.name}",
            "encodingFormat": "application/x-parquet",
            "sha256": sha256_file(p),
        }
        for p in shards
    ]
    distribution += [
        {"@type": "cr:FileSet", "@id": "manifest-shards", "name": "manifest-shards",
         "encodingFormat": "application/x-parquet", "includes": f"{MANIFEST_DIR}/part-*.parquet"},
        {"@type": "cr:FileSet", "@id": "images", "name": "images", "encodingFormat": "image/png",
         "includes": _image_globs(file_names or [])},
    ]  # fmt: skip
    fields = [
        {
            "@type": "cr:Field",
            "@id": f"manifest/{f.name}",
            "name": f.name,
            "description": (f.metadata or {}).get(b"doc", b"").decode(),
            "dataType": _croissant_type(f.type),
            "source": {"fileSet": {"@id": "manifest-shards"}, "extract": {"column": f.name}},
        }
        for f in MANIFEST_FIELDS
    ]
    for f in fields:
        if f["name"] == "file_name":
            # The join of each render to its manifest row: the render's path in the dataset (a string, hence
            # the identity regex) references the manifest's file_name column.
            f["source"] = {"fileSet": {"@id": "images"}, "extract": {"fileProperty": "fullpath"},
                           "transform": {"regex": "^(.*)$"}}  # fmt: skip
            f["references"] = {"fileSet": {"@id": "manifest-shards"}, "extract": {"column": "file_name"}}
    names = card.get("labels", {}).get("names", list(EXPRESSIONS))
    for f in fields:
        if f["name"] == "expression_index":
            # The label order, stated once: each index is a key of the `expressions` record set.
            f["description"] += (
                f"; the label, named by the `{LABELS_RECORD_SET}` record set (metadata.parquet repeats it as `label`)"
            )
            f["references"] = {"field": {"@id": f"{LABELS_RECORD_SET}/label"}}
    fields.append(
        {
            "@type": "cr:Field",
            "@id": "manifest/image",
            "name": "image",
            "description": "the render itself",
            "dataType": "sc:ImageObject",
            "source": {"fileSet": {"@id": "images"}, "extract": {"fileProperty": "content"}},
        }
    )
    lineage = card["lineage"]
    name = card["name"]
    today = datetime.now(UTC).date().isoformat()
    return {
        "@context": CROISSANT_CONTEXT,
        "@type": "sc:Dataset",
        "conformsTo": "http://mlcommons.org/croissant/1.1",
        "name": name,
        "description": dataset_meta.get("description", "Synthetic facial-expression images rendered by fersynth."),
        "license": card["license"],
        "version": _semver(str(name)),
        "datePublished": today,
        "citeAs": (
            f"@misc{{{re.sub(r'[^0-9A-Za-z]+', '_', str(name))}, title = {{{name}: synthetic facial expressions "
            f"rendered by fersynth}}, note = {{fersynth {lineage['code_version']}}}, year = {{{today[:4]}}}}}"
        ),
        "distribution": distribution,
        "recordSet": [
            {"@type": "cr:RecordSet", "@id": "manifest", "name": "manifest", "field": fields},
            _labels_record_set(names),
        ],
        "rai:dataCollection": "Synthetic: rendered by a GAN from identity and expression codes; no new photos taken.",
        "rai:dataAnnotationProtocol": "Labels are the rendering targets; per-image checks score them automatically.",
        "prov:wasGeneratedBy": {
            "@type": "prov:Activity",
            "prov:used": _relative_paths(
                {"checkpoint": lineage["checkpoint"], "training_data": lineage["training_data"]}, root
            ),
            "sc:softwareVersion": lineage["code_version"],
        },
    }

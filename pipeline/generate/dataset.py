"""Generate a dataset end to end: plan -> shards -> FID/KID + gates -> card/report -> publish or reject.

Folders (OUT is what the user passes as --out):

    OUT/.staging/<name>/   where a dataset is rendered, resumed and judged; a rejected one stays here,
                           with its quality report and a REJECTED file naming the failed gates
    OUT/<name>/            a published dataset: moved here in one os.replace once every gate passed

Publishing never shows a half dataset (pipeline.generate.publishing), and one run at a time writes a
dataset (pipeline.generate.staging).

The steps are plain functions so that the Prefect flow (flows/generate.py) maps the same code over
shards; `generate_dataset` runs them in-process:

    planning.prepare      resolve the config, plan the sweep, stage it (taking the dataset's lock)
    shards.render_shard   render, score and write one shard
    scoring.finish        FID/KID, usefulness, gates, quality report, grid; finalize
    publishing.publish    move a passing set to its final name, or mark it rejected
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from manifests.card import CARD_MD
from manifests.layout import GRID_FILE, REPORT_DIR
from pipeline.config import Config
from pipeline.generate.plan import load_plan
from pipeline.generate.planning import prepare
from pipeline.generate.publishing import publish
from pipeline.generate.scoring import ProgressFn, finish
from pipeline.generate.shards import render_shard
from pipeline.generate.staging import Prepared
from pipeline.quality.gates import GateReport


@dataclass
class GenerateResult:
    status: str  # published | rejected
    name: str
    dataset_dir: Path  # the published folder, or the staging folder of a rejected dataset
    staging_dir: Path
    run_id: str
    plan_key: str
    n_images: int
    n_shards: int
    shards_rendered: int = 0
    shards_skipped: int = 0
    gates: list[dict[str, Any]] = field(default_factory=list)
    failed_message: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    report: Path | None = None
    grid: Path | None = None
    card: Path | None = None
    seconds: float = 0.0

    @property
    def published(self) -> bool:
        return self.status == "published"

    def to_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


def generate_dataset(
    cfg: Config | None,
    checkpoint: Path | str,
    out: Path | str,
    *,
    name: str | None = None,
    overwrite: bool = False,
    overrides: list[str] | None = None,
    run_id: str | None = None,
    progress: ProgressFn | None = None,
) -> GenerateResult:
    """Render, check, gate and publish (or reject) a dataset in this process; no Prefect needed.

    `cfg=None` takes the checkpoint's config (with `overrides`). Rerunning after an interruption
    resumes: finished shards are kept, missing or damaged ones re-rendered.
    """
    t0 = time.perf_counter()
    run_id = run_id or uuid.uuid4().hex[:16]
    if progress:
        progress("plan", 0, 1, {})
    prep = prepare(cfg, Path(checkpoint), Path(out), name=name, overwrite=overwrite, overrides=overrides)
    if progress:
        progress("plan", 1, 1, {})
    try:
        return _render_judge_publish(prep, run_id, overwrite, progress, t0)
    finally:
        prep.release()


def _render_judge_publish(
    prep: Prepared, run_id: str, overwrite: bool, progress: ProgressFn | None, t0: float
) -> GenerateResult:
    if prep.published:
        return _result_from_published(prep, run_id, time.perf_counter() - t0)
    plan = load_plan(prep.staging)
    done = [0]
    total = len(plan.items)

    def tick(n: int) -> None:
        done[0] += n
        if progress:
            progress("render", done[0], total, {})

    rendered = skipped = 0
    for i in range(plan.n_shards):
        r = render_shard(prep.staging, i, run_id, plan=plan, progress=tick)
        rendered += r["status"] == "rendered"
        skipped += r["status"] in ("skipped", "rescored")  # rescored: judged again, nothing re-rendered
    verdict = finish(None, prep.staging, run_id, progress)
    where = publish(prep.staging, prep.final, verdict, overwrite)
    return GenerateResult(
        status=verdict["status"],
        name=prep.name,
        dataset_dir=where,
        staging_dir=prep.staging,
        run_id=run_id,
        plan_key=prep.plan_key,
        n_images=verdict["n_images"],
        n_shards=plan.n_shards,
        shards_rendered=rendered,
        shards_skipped=skipped,
        gates=verdict["gates"],
        failed_message=verdict["failed_message"],
        metrics=verdict["metrics"],
        report=where / REPORT_DIR / "report.md",
        grid=where / REPORT_DIR / GRID_FILE,
        card=where / CARD_MD,
        seconds=time.perf_counter() - t0,
    )


def _result_from_published(prep: Prepared, run_id: str, seconds: float) -> GenerateResult:
    card = json.loads((prep.final / "dataset_card.json").read_text(encoding="utf-8"))
    failed = GateReport()  # published datasets passed every enforced gate
    return GenerateResult(
        status="published",
        name=prep.name,
        dataset_dir=prep.final,
        staging_dir=prep.staging,
        run_id=run_id,
        plan_key=prep.plan_key,
        n_images=prep.n_items,
        n_shards=prep.n_shards,
        shards_skipped=prep.n_shards,
        gates=card.get("gates", []),
        failed_message=failed.failed_message(),
        metrics=card.get("metrics", {}),
        report=prep.final / REPORT_DIR / "report.md",
        grid=prep.final / REPORT_DIR / GRID_FILE,
        card=prep.final / CARD_MD,
        seconds=seconds,
    )

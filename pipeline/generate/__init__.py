"""Dataset generation: identity x expression sweeps rendered to sharded, resumable Parquet manifests.

Plain library code (no Prefect): `generate_dataset` (dataset.py) runs everything in-process;
flows/generate.py maps the same steps over shards as Prefect tasks. One module per step:
planning.py (`prepare`: config, plan, staging), staging.py (the staging folder, pending shards),
shards.py (`render_shard`), scoring.py (`finish`: FID/KID, usefulness, gates, report, grid) and
publishing.py (`publish`, crash recovery of an `--overwrite`).
"""

from manifests.layout import REJECTED_MARKER, REPORT_DIR
from pipeline.generate.dataset import GenerateResult, generate_dataset
from pipeline.generate.plan import PlanError, PlanItem, SweepPlan, build_plan, load_plan
from pipeline.generate.planning import prepare, resolve_config
from pipeline.generate.publishing import STAGING_DIR, GenerateError, publish
from pipeline.generate.scoring import finish
from pipeline.generate.shards import ShardError, render_shard
from pipeline.generate.staging import Prepared, pending_shards

__all__ = [
    "REJECTED_MARKER",
    "REPORT_DIR",
    "STAGING_DIR",
    "GenerateError",
    "GenerateResult",
    "PlanError",
    "PlanItem",
    "Prepared",
    "ShardError",
    "SweepPlan",
    "build_plan",
    "finish",
    "generate_dataset",
    "load_plan",
    "pending_shards",
    "prepare",
    "publish",
    "render_shard",
    "resolve_config",
]

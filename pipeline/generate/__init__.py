"""Dataset generation: identity x expression sweeps rendered to sharded, resumable Parquet manifests.

Plain library code (no Prefect): `generate_dataset` runs everything in-process; flows/generate.py maps
the same steps (`prepare`, `render_shard`, `finish`, `publish`) over shards as Prefect tasks.
"""

from pipeline.generate.dataset import (
    REJECTED_MARKER,
    REPORT_DIR,
    STAGING_DIR,
    GenerateError,
    GenerateResult,
    Prepared,
    finish,
    generate_dataset,
    pending_shards,
    prepare,
    publish,
    resolve_config,
)
from pipeline.generate.plan import PlanError, PlanItem, SweepPlan, build_plan, load_plan
from pipeline.generate.shards import ShardError, render_shard

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

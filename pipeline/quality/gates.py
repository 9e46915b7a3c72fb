"""Per-image flags and dataset-level gates (their thresholds are calibrated in pipeline.calibration).

Rules that hold everywhere here: a score that could not be computed (NaN or missing) never passes
(its gate fails with a note starting "not computed", naming why where the caller knows), an
empty dataset is an error rather than a vacuous pass, and every failed gate can name its value and
threshold (`GateReport.failed_message`), which becomes the flow's failure reason.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from pipeline.config import QualityConfig
from pipeline.expressions import EXPRESSIONS

Op = Literal[">=", "<="]

# Per-image columns this module reads (written by the flow from the checks' outputs).
COL_IDENTITY = "identity_cosine"
COL_FACE = "face_found"
COL_P_TARGET = "expression_p_target"
COL_PRED = "expression_pred"
COL_TARGET = "expression_idx"
COL_SSIM = "ssim"
COL_LABEL = "expression"


# --------------------------------------------------------------------------- per-image flags


def per_image_flags(
    df: pd.DataFrame, cfg: QualityConfig, identity_backend: Literal["facenet", "embedder"] = "facenet"
) -> pd.DataFrame:
    """Add identity_pass, expression_pass, ssim_pass (if an ssim column exists) and all_pass.

    Reads identity_cosine, face_found (optional, default True), expression_p_target and
    expression_pred + expression_idx (optional: without them only the probability is checked).
    NaN scores fail. Returns a copy.
    """
    if df.empty:
        raise ValueError("per-image table is empty: nothing to check")
    out = df.copy()
    id_thr = cfg.identity_threshold_for(identity_backend)
    face = out[COL_FACE].astype(bool) if COL_FACE in out else pd.Series(True, index=out.index)
    cos = out[COL_IDENTITY].astype(float)
    out["identity_pass"] = face & cos.notna() & (cos >= id_thr)
    p = out[COL_P_TARGET].astype(float)
    expr = p.notna() & (p >= _expression_thresholds(out, cfg))
    if COL_PRED in out and COL_TARGET in out:
        expr &= out[COL_PRED] == out[COL_TARGET]
    out["expression_pass"] = expr
    flags = ["identity_pass", "expression_pass"]
    if COL_SSIM in out:
        s = out[COL_SSIM].astype(float)
        # NaN SSIM means "no reference image" (a swap of a real photo has no ground truth): the flag
        # is NA (not applicable) there, not True. The dataset gate on mean SSIM still fails when
        # every row is NaN, so a broken SSIM step cannot pass unseen.
        out["ssim_pass"] = pd.array(np.where(s.isna(), None, s >= cfg.ssim_floor), dtype="boolean")
    out["all_pass"] = out[flags].all(axis=1)
    if "ssim_pass" in out:
        out["all_pass"] &= out["ssim_pass"].fillna(True).astype(bool)
    return out


def _expression_thresholds(df: pd.DataFrame, cfg: QualityConfig) -> pd.Series | float:
    """Each row's expression threshold: its target class's own where one is set, else the pooled one."""
    if not cfg.expression_thresholds:
        return cfg.expression_threshold
    if COL_LABEL in df:
        labels = df[COL_LABEL].astype(str)
    elif COL_TARGET in df:
        labels = df[COL_TARGET].map(lambda i: EXPRESSIONS[int(i)])
    else:
        raise ValueError(
            f"per-class expression thresholds need a {COL_LABEL!r} or {COL_TARGET!r} column; got {list(df.columns)}"
        )
    return labels.map(cfg.expression_threshold_for).astype(float)


def gate_inputs_from_manifest(df: pd.DataFrame) -> pd.DataFrame:
    """The manifest's per-image check columns under the names the gates read (generation and audit)."""
    per_image = pd.DataFrame(
        {
            "all_pass": df["all_pass"].astype(bool),
            "identity_pass": df["identity_pass"].fillna(False).astype(bool),
            "expression_pass": df["expression_pass"].astype(bool),
            "expression": df["expression"],
            "identity_cosine": df["identity_score"].astype(float),
            "expression_p_target": df["expression_p_target"].astype(float),
        }
    )
    if df["ssim_truth"].notna().any():
        # Only with ground truth: an all-NaN column would fail the SSIM gate for datasets (novel
        # identities, photos) where the check cannot apply.
        per_image["ssim"] = df["ssim_truth"].astype(float)
    return per_image


# --------------------------------------------------------------------------- dataset gates


@dataclass(frozen=True)
class Gate:
    name: str
    value: float
    threshold: float
    op: Op
    passed: bool
    note: str = ""
    enforced: bool = True  # False: reported only (e.g. FID on too few images; KID decides there)


@dataclass
class GateReport:
    gates: list[Gate] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates if g.enforced)

    @property
    def failed(self) -> list[Gate]:
        return [g for g in self.gates if g.enforced and not g.passed]

    def failed_message(self) -> str:
        """One line per failed gate with value, operator and threshold; '' when all passed."""
        parts = []
        for g in self.failed:
            if math.isnan(g.value):
                parts.append(f"{g.name} {g.note}")
                continue
            note = f" ({g.note})" if g.note else ""
            parts.append(f"{g.name} = {g.value:.4g}, required {g.op} {g.threshold:.4g}{note}")
        return "; ".join(parts)

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([asdict(g) for g in self.gates])

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form for manifest metadata and dataset cards (NaN/inf become None)."""

        def clean(x: Any) -> Any:
            return None if isinstance(x, float) and not math.isfinite(x) else x

        return {"passed": self.passed, "gates": [{k: clean(v) for k, v in asdict(g).items()} for g in self.gates]}


def make_gate(name: str, value: float | None, threshold: float, op: Op, note: str = "", enforced: bool = True) -> Gate:
    """A gate whose NaN/missing value fails as 'not computed' (with `note` as the reason) rather than
    comparing False silently."""
    v = math.nan if value is None else float(value)
    if math.isnan(v):
        return Gate(name, v, threshold, op, False, "not computed" + (f": {note}" if note else ""), enforced)
    ok = v >= threshold if op == ">=" else v <= threshold
    return Gate(name, v, threshold, op, bool(ok), note, enforced)


def class_balance_ratio(labels: pd.Series, expected: list[Any] | None = None) -> float:
    """max/min count over the expected classes (a missing class counts 0 -> inf)."""
    counts = labels.value_counts()
    classes = expected if expected is not None else list(counts.index)
    if not classes:
        return math.inf
    c = np.array([counts.get(k, 0) for k in classes], dtype=np.float64)
    return math.inf if c.min() == 0 else float(c.max() / c.min())


def evaluate_gates(per_image_df: pd.DataFrame, dataset_metrics: Mapping[str, Any], cfg: QualityConfig) -> GateReport:
    """Dataset-level publish/reject decision.

    per_image_df: rows with the flags from `per_image_flags` (all_pass, identity_pass,
    expression_pass, optional ssim/ssim_pass) and the target label column `expression`.
    dataset_metrics: keys fid, kid_mean, n_real, n_fake (from `compute_fid_kid`); missing keys
    give NaN, so a skipped FID/KID fails its gate instead of passing unseen.

    Gates: pass_rate (all_pass share), identity/expression pass rates, mean SSIM (when present),
    KID, FID (enforced only with >= min_fid_images on both sides, else reported), class balance
    of the passing renders over every class that was rendered (what a consumer keeping only
    passing images gets).
    """
    if per_image_df.empty:
        raise ValueError("per-image table is empty: a dataset with no images cannot pass the gates")
    missing = [c for c in ("all_pass", "identity_pass", "expression_pass") if c not in per_image_df]
    if missing:
        raise KeyError(f"per-image table lacks {missing}; run per_image_flags first")
    df = per_image_df
    gates = [
        make_gate("pass_rate", df["all_pass"].mean(), cfg.pass_rate_floor, ">="),
        make_gate("identity_pass_rate", df["identity_pass"].mean(), cfg.pass_rate_floor, ">="),
        make_gate("expression_pass_rate", df["expression_pass"].mean(), cfg.pass_rate_floor, ">="),
    ]
    if COL_SSIM in df:
        # mean over rows that have a reference; all-NaN -> NaN -> the gate fails with "nan".
        gates.append(make_gate("ssim_mean", df[COL_SSIM].astype(float).mean(), cfg.ssim_floor, ">="))
    n_real = dataset_metrics.get("n_real")
    n_fake = dataset_metrics.get("n_fake")
    n_min = min(n_real or 0, n_fake or 0)
    fid_error = dataset_metrics.get("fid_error", "")
    gates.append(make_gate("kid_mean", dataset_metrics.get("kid_mean"), cfg.kid_ceiling, "<=", fid_error))
    reliable = n_min >= cfg.min_fid_images
    fid_note = fid_error or (
        "" if reliable else f"informational: {n_min} < {cfg.min_fid_images} images per set; KID gate decides"
    )
    gates.append(make_gate("fid", dataset_metrics.get("fid"), cfg.fid_ceiling, "<=", fid_note, enforced=reliable))
    if COL_LABEL in df:
        expected = sorted(df[COL_LABEL].dropna().unique().tolist(), key=str)
        ratio = class_balance_ratio(df.loc[df["all_pass"].astype(bool), COL_LABEL], expected)
        note = "a class has no passing render" if math.isinf(ratio) else ""
        gates.append(make_gate("class_balance", ratio, cfg.class_balance_tolerance, "<=", note))
    if dataset_metrics.get("fid_per_expression") is not None:
        gates.append(worst_class_kid_gate(dataset_metrics["fid_per_expression"]))
    if cfg.usefulness:
        gates.append(usefulness_gate(dataset_metrics, cfg))
    return GateReport(gates)


def worst_class_kid_gate(per_expression: list[dict[str, Any]]) -> Gate:
    """The expression whose KID exceeds its own ceiling most (set ceiling + real-vs-real noise at its size)."""
    # KID needs two images a side: a class sampled thinner than that (tiny sets) is not measurable.
    rows = [r for r in per_expression if (r.get("n_fake") or 0) >= 2 and (r.get("n_real") or 2) >= 2]
    if not rows:
        note = "informational: no expression has 2 renders and 2 real images in the FID sample"
        return make_gate("kid_worst_class", None, math.nan, "<=", note, enforced=False)
    bad = [r for r in rows if not _finite(r.get("kid_mean")) or not _finite(r.get("kid_threshold"))]
    if bad:
        return make_gate(
            "kid_worst_class", None, math.nan, "<=", f"no KID for {', '.join(str(r['label']) for r in bad)}"
        )
    worst = max(rows, key=lambda r: r["kid_mean"] - r["kid_threshold"])
    note = f"{worst['label']} ({worst['n_fake']} renders); each class: set ceiling + real-vs-real KID at its size"
    return make_gate("kid_worst_class", worst["kid_mean"], worst["kid_threshold"], "<=", note)


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and math.isfinite(v)


def _recogniser_spread(m: Mapping[str, Any]) -> str:
    """'; mean of 3 recognisers, ratios 0.45-0.56' (nothing for one recogniser or an older card)."""
    ratios = m.get("usefulness_ratios") or []
    if len(ratios) < 2:
        return ""
    return f"; mean of {len(ratios)} recognisers, ratios {min(ratios):.3f}-{max(ratios):.3f}"


def usefulness_gate(dataset_metrics: Mapping[str, Any], cfg: QualityConfig) -> Gate:
    """Accuracy on real faces of a recogniser trained on the renders / of one trained on real images."""
    m = dataset_metrics
    note = m.get("usefulness_error") or "usefulness figures missing: the gate did not run"
    if m.get("usefulness_ratio") is not None and math.isfinite(m["usefulness_ratio"]):
        note = (
            f"real-{m['usefulness_eval_split']} accuracy {m['usefulness_accuracy_synthetic']:.3f} trained on "
            f"{m['usefulness_n_train']} renders vs {m['usefulness_accuracy_real']:.3f} on as many real images "
            f"(chance {m['usefulness_chance']:.3f}){_recogniser_spread(m)}"
        )
    return make_gate("usefulness_ratio", m.get("usefulness_ratio"), cfg.usefulness_floor, ">=", note)

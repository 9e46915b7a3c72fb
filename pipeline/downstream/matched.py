"""The real-matched set: the real images a perfect renderer would have drawn, row for row.

For each row of a generated manifest rendered from a real identity, the real image of that
identity with the row's target expression and the nearest intensity it has (the exact one when the
data has it), preferring the session of the photo the render started from (the manifest's
`source_image`; for older manifests pipeline.generate.plan.base_image_paths), then the first path. TSTR trains on it as the ceiling of
the synthetic arm: same identities, same label mix, real pixels.

Rows are excluded, and counted, when their identity has no real images (novel or file identities),
when its images lie only in the split the classifier is evaluated on (training on them would test
on training faces), or when it has no image of that expression.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from pipeline.core.data import session_of
from pipeline.generate.plan import base_image_paths


@dataclass(frozen=True)
class MatchedSet:
    frame: pd.DataFrame  # rows of the labels table, one per matched manifest row, in manifest order
    n_rows: int  # manifest rows asked for
    excluded: dict[str, int] = field(default_factory=dict)  # reason -> rows: novel, eval_split, no_image
    n_inexact_intensity: int = 0  # matched at the nearest intensity the identity has, not the exact one


def match_real(manifest: pd.DataFrame, labels: pd.DataFrame, eval_split: str | None = None) -> MatchedSet:
    """The real image of every manifest row's identity, expression and intensity (see the module doc)."""
    rows = manifest.reset_index(drop=True)
    known = set(labels["identity"])
    pool = labels[labels["split"] != eval_split] if eval_split else labels
    in_pool = set(pool["identity"])
    ident = rows["identity_id"].astype(str)
    novel = ~ident.isin(known)
    held_out = ident.isin(known) & ~ident.isin(in_pool)

    wanted = rows[ident.isin(in_pool)].assign(_row=lambda d: d.index, identity=lambda d: d["identity_id"].astype(str))
    cand = pool.assign(_session=pool["nuisance"].map(session_of))
    session_of_path = dict(zip(labels["path"], labels["nuisance"].map(session_of), strict=True))
    base_paths = base_image_paths(pool, sorted(wanted["identity"].unique()))
    own = wanted["source_image"] if "source_image" in wanted else pd.Series(None, index=wanted.index, dtype=object)
    source = own.where(own.notna(), wanted["identity"].map(base_paths))
    wanted = wanted.assign(_base=source.map(session_of_path).fillna(0))
    pairs = wanted[["_row", "identity", "expression", "intensity", "_base"]].merge(
        cand, on=["identity", "expression"], suffixes=("_want", "")
    )
    pairs["_gap"] = (pairs["intensity"].astype(float) - pairs["intensity_want"].astype(float)).abs().round(6)
    pairs["_other_session"] = pairs["_session"] != pairs["_base"]
    best = (
        pairs.sort_values(["_row", "_gap", "_other_session", "path"], kind="stable")
        .groupby("_row", sort=True)
        .head(1)
        .set_index("_row")
    )
    frame = best[labels.columns].reset_index(drop=True)
    return MatchedSet(
        frame=frame,
        n_rows=len(rows),
        excluded={
            "novel": int(novel.sum()),
            "eval_split": int(held_out.sum()),
            "no_image": int(len(wanted) - len(best)),
        },
        n_inexact_intensity=int((best["_gap"] > 1e-4).sum()),
    )


def describe(m: MatchedSet) -> str:
    """One line: how many rows matched and why the others did not."""
    why = ", ".join(f"{n} {k}" for k, n in m.excluded.items() if n) or "none"
    inexact = f"; {m.n_inexact_intensity} at the nearest intensity" if m.n_inexact_intensity else ""
    return f"{len(m.frame)} of {m.n_rows} rows matched (excluded: {why}){inexact}"

"""Identity-disjoint train/val/test splits, deterministic from a seed."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


class SplitError(ValueError):
    """The identities cannot be split as asked."""


def split_identities(
    identities: Iterable[str], val_fraction: float, test_fraction: float, seed: int = 0
) -> dict[str, str]:
    """Assign each identity to 'train', 'val' or 'test'; no identity is in two splits.

    The order is a hash of (seed, identity), so adding identities never moves existing ones
    much and the result does not depend on input order. A non-zero fraction gets at least one
    identity; training always keeps at least one.
    """
    ids = sorted(set(identities))
    n = len(ids)
    n_val = round(n * val_fraction) if val_fraction > 0 else 0
    n_test = round(n * test_fraction) if test_fraction > 0 else 0
    n_val = max(n_val, 1) if val_fraction > 0 else 0
    n_test = max(n_test, 1) if test_fraction > 0 else 0
    if n - n_val - n_test < 1:
        raise SplitError(
            f"cannot split {n} identit{'y' if n == 1 else 'ies'} into train/val/test with "
            f"val_fraction={val_fraction}, test_fraction={test_fraction}: need at least "
            f"{1 + (val_fraction > 0) + (test_fraction > 0)} identities"
        )

    def key(identity: str) -> str:
        return hashlib.sha256(f"{seed}:{identity}".encode()).hexdigest()

    ordered = sorted(ids, key=key)
    out: dict[str, str] = {}
    for i, identity in enumerate(ordered):
        out[identity] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return out

import pytest

from pipeline.splits import SplitError, split_identities


def test_splits_are_disjoint_deterministic_and_sized() -> None:
    ids = [f"id{i:03d}" for i in range(100)]
    a = split_identities(ids, 0.1, 0.2, seed=3)
    b = split_identities(reversed(ids), 0.1, 0.2, seed=3)
    assert a == b
    counts = {s: sum(v == s for v in a.values()) for s in ("train", "val", "test")}
    assert counts == {"train": 70, "val": 10, "test": 20}
    assert split_identities(ids, 0.1, 0.2, seed=4) != a


def test_too_few_identities_is_an_error_naming_counts() -> None:
    with pytest.raises(SplitError, match="cannot split 2 identities"):
        split_identities(["a", "b"], 0.1, 0.1)
    assert set(split_identities(["a", "b", "c"], 0.1, 0.1).values()) == {"train", "val", "test"}

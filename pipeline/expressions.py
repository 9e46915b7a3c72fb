"""The seven basic expressions and the facial action units (AUs) the project labels them with."""

from __future__ import annotations

EXPRESSIONS: tuple[str, ...] = ("neutral", "happy", "sad", "surprise", "fear", "anger", "disgust")
EXPRESSION_INDEX: dict[str, int] = {name: i for i, name in enumerate(EXPRESSIONS)}

# FACS action units used by the procedural renderer, in vector order.
AU_NAMES: tuple[str, ...] = (
    "AU1_inner_brow_raise",
    "AU2_outer_brow_raise",
    "AU4_brow_lower",
    "AU5_upper_lid_raise",
    "AU6_cheek_raise",
    "AU7_lid_tighten",
    "AU9_nose_wrinkle",
    "AU12_lip_corner_pull",
    "AU15_lip_corner_depress",
    "AU20_lip_stretch",
    "AU24_lip_press",
    "AU26_jaw_drop",
)


def expression_index(name: str) -> int:
    """Index of an expression name; raises ValueError naming the bad value and the valid ones."""
    key = name.strip().lower()
    if key not in EXPRESSION_INDEX:
        raise ValueError(f"unknown expression {name!r}; expected one of {', '.join(EXPRESSIONS)}")
    return EXPRESSION_INDEX[key]


def check_expression_names(names: list[str]) -> list[str]:
    """A non-empty list of known expression names, else ValueError naming the bad ones."""
    bad = [e for e in names if e not in EXPRESSION_INDEX]
    if bad:
        raise ValueError(f"unknown expression(s) {bad}; expected a subset of {list(EXPRESSIONS)}")
    if not names:
        raise ValueError("at least one expression is needed")
    return list(names)
